"""A reward model used outside align: README's lines (transformers + peft alone, in a fresh process) give
`align reward score`'s rewards; the adapter names its base as another machine can; the model card lists
the base, the data files with their line counts and hashes, and the figures."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from align.core.model_card import portable_base_name
from align.reward.score import RewardModel

README = Path(__file__).resolve().parents[2] / "README.md"
CONVERSATIONS = [
    [{"role": "user", "content": "What is 7 + 5?"}, {"role": "assistant", "content": "12"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue, as the sky is on a clear day.\n"}],
    [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}],
]


def readme_lines() -> str:
    """The python block README shows under its reward-elsewhere marker."""
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- reward-elsewhere:[^\n]*-->\n```python\n(.*?)```", text, re.S)
    assert found, "README.md lost its reward-elsewhere block"
    return found.group(1)


def test_readmes_lines_score_as_align_reward_score_does(reward_run, tmp_path):
    root, _ = reward_run
    adapter = root / "run" / "adapter"
    block = readme_lines()
    assert len(block.strip().splitlines()) == 5
    script = tmp_path / "elsewhere.py"
    # bitsandbytes 0.50 runs 4-bit inference in bf16 on CPUs with AVX512-BF16 (~1% off here); the README says so,
    # and this machine has them: the lines run as on a GPU or any other CPU, where the figure is exact
    script.write_text("import json, sys\nimport bitsandbytes.nn.modules\n"
                      "bitsandbytes.nn.modules.has_avx512bf16 = lambda: False\n"
                      "rewards = []\nfor messages in json.loads(sys.argv[1]):\n"
                      + textwrap.indent(block.replace('"runs/x/reward/adapter"', repr(str(adapter))), "    ")
                      + "    rewards.append(reward)\nprint(json.dumps(rewards))\n")
    run = subprocess.run([sys.executable, str(script), json.dumps(CONVERSATIONS)], capture_output=True, text=True,
                         timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-3000:]
    elsewhere = json.loads(run.stdout.strip().splitlines()[-1])

    model = RewardModel.load(root / "run")
    align = model.score([c[:-1] for c in CONVERSATIONS], [c[-1]["content"] for c in CONVERSATIONS]).tolist()
    assert elsewhere == pytest.approx(align, abs=1e-4)
    assert len(set(round(r, 3) for r in align)) == len(align)  # three different rewards, not one constant


def test_the_saved_template_ends_where_the_reward_is_read(reward_run):
    from transformers import AutoTokenizer

    from align.reward.score import conversation_text

    root, _ = reward_run
    saved = AutoTokenizer.from_pretrained(str(root / "run" / "adapter"))
    model = RewardModel.load(root / "run")
    for c in CONVERSATIONS:
        assert saved.apply_chat_template(c, tokenize=False) == conversation_text(model.tokenizer, c[:-1], c[-1]["content"])
    # a generation prompt is rendered as the model's own template renders it
    assert saved.apply_chat_template(CONVERSATIONS[0][:1], tokenize=False, add_generation_prompt=True).endswith(
        "<|im_start|>assistant\n")
    assert saved.pad_token != saved.eos_token


def test_the_adapter_names_its_base_and_carries_a_model_card(reward_run, tiny_model_dir):
    root, figures = reward_run
    adapter = root / "run" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)  # as the user named it
    card = (adapter / "README.md").read_text()
    front = card.split("---")[1]
    assert f"base_model: {tiny_model_dir}" in front and "library_name: peft" in front
    assert "pipeline_tag: text-classification" in front and '"reward"' in front and '"nf4"' in front
    train = root / "train.jsonl"
    digest = hashlib.sha256(train.read_bytes()).hexdigest()
    assert f"`{train}`: 160 lines, sha256 `{digest}`" in card
    assert f"`eval/accuracy`: {figures['eval/accuracy']:.4g}" in card
    record = json.loads((adapter / "align_base.json").read_text())
    assert (record["quantization"], record["double_quant"], record["compute_dtype"]) == ("nf4", True, "float32")


def test_the_embedded_base_is_named_by_its_hub_id():
    assert portable_base_name("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert portable_base_name("SmolLM2") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert portable_base_name("meta-llama/Llama-3.1-8B") == "meta-llama/Llama-3.1-8B"


def test_an_exported_reward_model_scores_as_align_with_transformers_alone(reward_run, tmp_path):
    """`align export` of a reward stage: a plain sequence classifier (NF4 dequantised, LoRA merged, align's pad
    token id in its config), scored by AutoModelForSequenceClassification with no peft and no bitsandbytes."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from align.export import export

    root, figures = reward_run
    out = export(root / "run", tmp_path / "exported")
    tok = AutoTokenizer.from_pretrained(out)
    rm = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert rm.config.pad_token_id == tok.pad_token_id and "quantization_config" not in rm.config.to_dict()
    with torch.no_grad():
        plain = [rm(**tok.apply_chat_template(c, return_dict=True, return_tensors="pt")).logits[0, 0].item()
                 for c in CONVERSATIONS]
    align = RewardModel.load(root / "run").score([c[:-1] for c in CONVERSATIONS], [c[-1]["content"] for c in CONVERSATIONS])
    assert plain == pytest.approx(align.tolist(), abs=1e-4)
    normaliser = json.loads((out / "normaliser.json").read_text())
    assert normaliser == {key: pytest.approx(figures[f"normaliser/{key}"])
                          for key in ("mean", "std", "length_corr", "length_slope_per_100_tokens")}
