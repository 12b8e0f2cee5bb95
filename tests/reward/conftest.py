"""The tiny reward model the reward tests read: trained once for the package."""

from __future__ import annotations

import json

import pytest

from align.core.config import load_config
from align.reward.config import RewardConfig
from align.reward.train import train
from tests.reward.test_train import separable_preferences


@pytest.fixture(scope="package")
def reward_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("reward")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in separable_preferences(160, seed=1)))
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in separable_preferences(40, seed=2)))
    config = load_config(RewardConfig, None, [
        f"out_dir={root / 'run'}", f"model.name={tiny_model_dir}", f"data.train={root / 'train.jsonl'}",
        f"data.eval={root / 'eval.jsonl'}", "training.epochs=2", "training.learning_rate=3e-3", "training.save_steps=10",
        "model.lora.r=8", "tracking.wandb=false", "tracking.logging_steps=5",
    ])
    return root, train(config)
