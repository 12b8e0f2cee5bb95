"""Stage directories for the evaluation tests, built in seconds on the tiny model: an SFT-like LoRA
adapter, a head-only reward model, and a second tiny base of another width."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import DEMO


@pytest.fixture(scope="session")
def eval_dirs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from align.core import modeling

    root = tmp_path_factory.mktemp("eval-dirs")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    base = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    # init_lora_weights=False: B is not zero, so the adapter really changes the model (KL > 0)
    adapter = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    sft = root / "sft"
    modeling.save_loadable(adapter, tokenizer, sft / "adapter", modeling.ModelConfig(name=str(tiny_model_dir),
                                                                                      quantization="none"))
    (sft / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train/loss": 2.0 / s}) + "\n" for s in (1, 2, 3)))

    reward = root / "reward" / "model"
    reward.mkdir(parents=True)
    tokenizer.save_pretrained(reward)
    (reward / modeling.BASE_FILE).write_text(json.dumps(
        {"name": str(tiny_model_dir), "path": str(tiny_model_dir), "quantization": "none", "tuning": "head"}))
    save_file({"weight": torch.randn(1, base.config.hidden_size)}, reward / "score.safetensors")
    (reward / "normaliser.json").write_text(json.dumps({"mean": 0.1, "std": 2.0}))

    narrow = root / "narrow-base"
    tokenizer.save_pretrained(narrow)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(narrow)
    return {"base": tiny_model_dir, "sft": sft, "reward": root / "reward", "narrow": narrow}


@pytest.fixture
def heldout(write_jsonl) -> Path:
    rows = [json.loads(line) for line in (DEMO / "heldout.jsonl").read_text().splitlines()[:6]]
    rows.append({"prompt": "Tell me about rivers."})  # no reference, and the demo judge refuses it
    return write_jsonl("heldout.jsonl", rows)
