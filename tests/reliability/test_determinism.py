"""Determinism: on CPU the same seed gives the same run twice. Every logged figure but timings must
be equal, exactly: the runs share the process, the thread count and the kernels, so nothing but
a missed seed or an unordered iteration could make them differ. The final weights must match
bit for bit."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from tests.reliability import stages

WEIGHTS = {"sft": "adapter/adapter_model.safetensors", "reward": "adapter/adapter_model.safetensors",
           "ppo": "adapter/adapter_model.safetensors"}


@pytest.mark.parametrize("stage", ["sft", "reward", "ppo"])
def test_the_same_seed_gives_the_same_run(stage, tiny_model_dir, tmp_path):
    data = stages.preference_file(tmp_path / "prefs.jsonl")
    figures = [stages.run_in_process(stage, tiny_model_dir, data, tmp_path / name) for name in ("a", "b")]
    a, b = (stages.comparable(stages.logs(tmp_path / name)) for name in ("a", "b"))
    assert len(a) >= stages.STEPS[stage] and a == b
    assert stages.comparable([figures[0]]) == stages.comparable([figures[1]])
    weights = [load_file(tmp_path / name / WEIGHTS[stage]) for name in ("a", "b")]
    assert weights[0].keys() == weights[1].keys()
    assert all(weights[0][k].equal(weights[1][k]) for k in weights[0])


def test_another_seed_gives_another_run(tiny_model_dir, tmp_path):
    """The check above would pass if the seed were ignored and every run were alike: it is not."""
    data = stages.preference_file(tmp_path / "prefs.jsonl")
    stages.run_in_process("ppo", tiny_model_dir, data, tmp_path / "a", "training.updates=2")
    stages.run_in_process("ppo", tiny_model_dir, data, tmp_path / "b", "training.updates=2", "training.seed=7")
    a, b = (stages.comparable(stages.step_records(tmp_path / name)) for name in ("a", "b"))
    assert a[0]["objective/scores"] != b[0]["objective/scores"] or a[0]["objective/kl"] != b[0]["objective/kl"]
