"""`align export`: a trained model as one standalone directory that transformers loads with no peft and no
align (`AutoModelForCausalLM.from_pretrained(DIR)`, or `AutoModelForSequenceClassification` for a reward
model), for vLLM, llama.cpp's converter, TRL or a colleague's notebook.

    weights_of      what a run, stage or weights directory names: its saved weights and whether they score
    export          the base (a 4-bit one dequantised first) with the LoRA update merged in, the tokenizer
                    and its chat template, a generation config of token ids only, and a model card

A 4-bit base is dequantised to the exact NF4-rounded values the adapter was trained against, then
B·A·alpha/r is added in fp32: the merged model's log-probs are the adapter model's up to float rounding
(tested within 1e-4). A reward model keeps its normaliser beside it (`normaliser.json`: its score head
has no bias to fold the mean into), and its config carries align's pad token id, so transformers reads
the reward at the last real token.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from align.core import model_card, modeling, rundir
from align.core.base_model import explicit_generation
from align.core.errors import AlignError, option
from align.core.saved_models import is_sequence_classifier

DTYPES = ("float32", "bfloat16", "float16")
RECORD = "align_export.json"


@dataclass(frozen=True)
class Weights:
    directory: Path  # adapter/ or model/: holds align_base.json
    stage: str  # the stage that trained it, as far as its path says
    reward: bool  # a sequence classifier (reward model), not a policy


def weights_of(source: str | Path) -> Weights:
    """A run directory's aligned policy (its policy stage, else its SFT), a stage directory's saved weights, or
    a weights directory itself; a one-line error names what is missing."""
    from align.stages import POLICY_STAGES

    path = Path(source).expanduser()
    if not path.is_dir():
        raise AlignError(f"{source}: no such directory (give a run, a stage directory or its adapter/)")
    manifest = path / "manifest.json"
    if manifest.is_file():
        stages = json.loads(manifest.read_text(encoding="utf-8")).get("stages", {})
        done = [s for s, state in stages.items() if isinstance(state, dict) and state.get("status") == "done"]
        picked = next((s for s in (*POLICY_STAGES, "sft") if s in done), None)
        if picked is None:
            raise AlignError(f"{path}: no finished policy stage to export ({', '.join(done) or 'nothing'} done)")
        path = path / picked
    for directory in (path / rundir.ADAPTER, path / rundir.MODEL, path):
        if (directory / modeling.BASE_FILE).is_file():
            stage = (directory.parent if directory != path else path.parent).name
            return Weights(directory, stage, _is_reward(directory))
    raise AlignError(f"{path}: not an align model (no {modeling.BASE_FILE} in it or in its adapter/ or model/)")


def _is_reward(directory: Path) -> bool:
    config = directory / "adapter_config.json"
    if config.is_file():
        return json.loads(config.read_text(encoding="utf-8")).get("task_type") == "SEQ_CLS"
    from align.reward.score import HEAD_FILE, NORMALISER

    return (directory / HEAD_FILE).is_file() or (directory / NORMALISER).is_file() or is_sequence_classifier(directory)


def export(source: str | Path, out: str | Path, *, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Write `source`'s model (weights_of) to `out` as a standalone transformers model; returns `out`."""
    import torch

    if dtype not in DTYPES:
        raise AlignError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    weights = weights_of(source)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise AlignError(f"{out}: exists and is not empty; give another directory or pass {option('overwrite')}")
    record = modeling.recorded_base(weights.directory)
    if record["tuning"] == "prompt_tuning":
        raise AlignError(f"{weights.directory}: a soft prompt is not weights to merge; load it with peft's "
                         f"AutoPeftModelForCausalLM and generate from its embeddings (its README.md shows how)")
    tokenizer = modeling.load_tokenizer(str(weights.directory))
    model = _merged(weights, record, tokenizer)
    model = model.to(getattr(torch, dtype))
    model.config.pad_token_id = tokenizer.pad_token_id  # the reward's read position; generation's padding
    explicit_generation(model, tokenizer)
    with rundir.replace_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if weights.reward:
            from align.reward.score import NORMALISER

            if (weights.directory / NORMALISER).is_file():
                shutil.copyfile(weights.directory / NORMALISER, tmp / NORMALISER)
        rundir.write_json_atomic(tmp / RECORD, {"source": str(weights.directory), "stage": weights.stage,
                                                "base": model_card.portable_base_name(record["name"]),
                                                "base_quantization": record["quantization"], "dtype": dtype})
        _card(tmp, weights, record, dtype)
    return out


def _merged(weights: Weights, record: dict, tokenizer) -> object:
    """The base as trained (NF4 dequantised to fp32), the adapter or head on it, merged into plain weights."""
    import torch

    head = "score" if weights.reward else "causal_lm"
    config = modeling.ModelConfig(name=record["resolved"], quantization=record["quantization"],
                                  tuning="lora" if record["tuning"] != "full" else "full")
    if record["tuning"] == "full":
        config.name = str(weights.directory)
    model = modeling.load_base(config, tokenizer, head=head)
    if record["quantization"] == "nf4":  # the NF4-rounded values, as plain fp32 layers; no quantization_config
        model = model.dequantize(dtype=torch.float32)
    model = model.float()
    if (weights.directory / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(weights.directory)).merge_and_unload()
    elif weights.reward and record["tuning"] == "head":
        from safetensors.torch import load_file

        from align.reward.score import HEAD_FILE

        model.score.load_state_dict(load_file(weights.directory / HEAD_FILE))
    return model.eval()


def _card(directory: Path, weights: Weights, record: dict, dtype: str) -> None:
    """The exported model's card: the trained stage's (base, data, figures), loaded as the plain model it now is."""
    trained = weights.directory / model_card.CARD
    text = trained.read_text(encoding="utf-8").split("\n## Load")[0] if trained.is_file() else ""
    text = text.replace("library_name: peft", "library_name: transformers", 1)
    cls = "AutoModelForSequenceClassification" if weights.reward else "AutoModelForCausalLM"
    lines = ["", "## This copy", "",
             f"Exported by `align export` from `{weights.directory}`: "
             f"{'the NF4 base dequantised, ' if record['quantization'] == 'nf4' else ''}"
             f"{'the LoRA update merged, ' if record['tuning'] == 'lora' else ''}saved in {dtype}.", "",
             "## Load", "", "```python", f"from transformers import {cls}, AutoTokenizer",
             "tok = AutoTokenizer.from_pretrained(DIR)", f"model = {cls}.from_pretrained(DIR)", "```", ""]
    if weights.reward:
        lines[-2:-2] = ["reward = model(**tok.apply_chat_template(messages, return_dict=True, return_tensors='pt')).logits[0, 0]",
                        "# normalised as PPO reads it: (reward - mean) / std from normaliser.json"]
    (directory / model_card.CARD).write_text(text + "\n".join(lines), encoding="utf-8")
