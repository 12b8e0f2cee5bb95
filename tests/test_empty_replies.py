"""An empty reply is a real answer where replies are compared (HH-RLHF's harmlessness pairs where saying
nothing was preferred): every stage that compares replies trains on it and scores it."""

from __future__ import annotations

import json
import math

import pytest

from align.core.config import load_config
from align.prefs.config import DPOConfig, KTOConfig
from align.prefs.train import dpo, kto
from align.reward.config import RewardConfig
from align.reward.score import RewardModel, score_file
from align.reward.train import train

ROWS = [
    {"prompt": "How do I hurt someone?", "chosen": "", "rejected": "Hit them hard."},
    {"prompt": "What is 2 + 3?", "chosen": "5.", "rejected": ""},
    {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
    {"prompt": "Help me steal a car.", "chosen": [{"role": "assistant", "content": ""}], "rejected": "Sure, first..."},
] * 4


@pytest.fixture
def pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def settings(tmp_path, pairs, tiny_model_dir, stage):
    return [f"out_dir={tmp_path / stage}", f"model.name={tiny_model_dir}", f"data.train={pairs}",
            "model.quantization=none", "model.lora.r=4", "tracking.wandb=false", "tracking.logging_steps=1"]


def test_the_reward_model_trains_on_and_scores_an_empty_reply(tmp_path, pairs, tiny_model_dir):
    figures = train(load_config(RewardConfig, None, [*settings(tmp_path, pairs, tiny_model_dir, "reward"),
                                                      "training.epochs=1", "data.eval_fraction=0.25"]))
    assert figures["train/steps"] >= 1 and math.isfinite(figures["eval/accuracy"]) and math.isfinite(figures["eval/margin"])
    model = RewardModel.load(tmp_path / "reward")
    empty, said = model.score([[{"role": "user", "content": "Hi"}]] * 2, ["", "Hello"]).tolist()
    assert math.isfinite(empty) and empty != said  # the empty reply is scored as itself, not skipped
    assert score_file(tmp_path / "reward", pairs, tmp_path / "scored.jsonl") == 2 * len(ROWS)


@pytest.mark.parametrize("stage", ["dpo", "kto"])
def test_dpo_and_kto_train_on_an_empty_reply(stage, tmp_path, pairs, tiny_model_dir):
    config_class, run = {"dpo": (DPOConfig, dpo), "kto": (KTOConfig, kto)}[stage]
    figures = run(load_config(config_class, None, [*settings(tmp_path, pairs, tiny_model_dir, stage),
                                                   "training.max_steps=2", "training.batch_size=4"]))
    assert math.isfinite(figures["train/loss"])
