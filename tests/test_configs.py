"""Every shipped YAML config loads: stage configs into their classes, pipeline presets into every
stage config they wire, accelerate configs into the fields `accelerate launch` needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from align.core.config import load_config
from align.pipeline import STAGES, Pipeline, stage_entry
from align.pipeline import load_config as load_pipeline

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*/*.yaml"))


def test_there_are_configs_for_every_stage_directory():
    kinds = {p.parent.name for p in CONFIGS}
    assert kinds <= set(STAGES) | {"pipeline", "accelerate"}, kinds - set(STAGES)


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name in STAGES], ids=lambda p: p.name)
def test_stage_config_loads(path):
    cls, _ = stage_entry(path.parent.name)
    load_config(cls, path)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "pipeline").glob("*.yaml")), ids=lambda p: p.name)
def test_pipeline_preset_builds_every_stage(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # presets name their stage configs relative to the repository
    pipeline = Pipeline(load_pipeline(path))
    for stage in pipeline.config.stages:
        config = pipeline.stage_config(stage)
        assert Path(config.out_dir) == pipeline.root / stage


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_config_names_a_distributed_type(path):
    config = yaml.safe_load(path.read_text())
    assert config["distributed_type"] in ("MULTI_GPU", "DEEPSPEED", "FSDP")
    assert config["num_processes"] >= 1
