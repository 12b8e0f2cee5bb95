"""Every shipped YAML config loads into its stage's config class."""

from __future__ import annotations

from pathlib import Path

import pytest

from align.core.config import load_config
from align.ppo.config import PPOConfig
from align.prefs.config import DPOConfig, OnlineConfig
from reward.config import RewardConfig
from sft.config import SFTConfig

ROOT = Path(__file__).resolve().parents[1]
STAGE_CLASSES = {"sft": SFTConfig, "reward": RewardConfig, "ppo": PPOConfig, "dpo": DPOConfig,
                 "grpo": OnlineConfig, "rloo": OnlineConfig}
CONFIGS = sorted((ROOT / "configs").glob("*/*.yaml"))


def test_there_are_configs_for_every_stage_directory():
    stages = {p.parent.name for p in CONFIGS}
    assert stages <= set(STAGE_CLASSES) | {"accelerate"}, stages - set(STAGE_CLASSES)


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name in STAGE_CLASSES], ids=lambda p: p.name)
def test_config_loads(path):
    load_config(STAGE_CLASSES[path.parent.name], path)
