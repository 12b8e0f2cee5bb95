"""Prompt tuning in SFT: its own learning rate, a start from real token embeddings, and a soft prompt that reads
back as tokens (prompt_tokens.json)."""

from __future__ import annotations

import json

import pytest

from align.sft.train import train
from tests.sft.test_train import tiny_config

TEXT = "Answer the question briefly."


def prompt_tuning_config(model_dir, out_dir, *extra):
    return tiny_config(model_dir, out_dir, "model.tuning=prompt_tuning", "model.quantization=none",
                       "training.epochs=1", "training.max_steps=2", *extra)


def test_a_soft_prompt_from_known_tokens_reads_back_as_those_tokens(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny_model_dir)(TEXT, add_special_tokens=False)["input_ids"]
    out = tmp_path / "run"
    # a rate that leaves the vectors where they started: each is then exactly its token's embedding
    train(prompt_tuning_config(tiny_model_dir, out, f"model.prompt_tuning.init_text={TEXT}",
                               f"model.prompt_tuning.num_virtual_tokens={len(ids)}", "model.prompt_tuning.learning_rate=1e-12"))
    read = json.loads((out / "prompt_tokens.json").read_text())
    assert [row["nearest"][0]["id"] for row in read] == ids
    assert all(len(row["nearest"]) == 5 and row["nearest"][0]["cosine"] == pytest.approx(1.0, abs=1e-4) for row in read)
    assert "soft prompt, as its nearest tokens" in capsys.readouterr().out


def test_prompt_tuning_trains_at_its_own_rate_from_vocabulary_embeddings(tiny_model_dir, tmp_path):
    """Not training.learning_rate (LoRA's 5e-3 here) and not N(0, 1) vectors: every initial vector is some
    token's embedding."""
    import torch
    from transformers import AutoModelForCausalLM

    from align.core import modeling

    config = prompt_tuning_config(tiny_model_dir, tmp_path / "run")
    assert config.learning_rate == config.model.prompt_tuning.learning_rate == 3e-2
    torch.manual_seed(config.training.seed)
    model = modeling.attach_tuning(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config.model)
    start, table = model.get_prompt(batch_size=1)[0], model.get_input_embeddings().weight
    nearest = torch.cdist(start.detach(), table.detach()).argmin(dim=1)
    assert torch.equal(start.detach(), table.detach()[nearest])

    figures = train(config)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/learning_rate"] for r in logged if "train/learning_rate" in r]
    assert figures["train/steps"] == 2 and rates and max(rates) > 5e-3
