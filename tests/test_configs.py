"""Every shipped YAML config loads: stage configs into their classes, pipeline presets into every
stage config they wire, accelerate configs into the fields `accelerate launch` needs. Every field of
every config dataclass a stage reaches carries a docstring."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from align.core.config import load_config
from align.core.config_docs import field_docstrings
from align.pipeline import Pipeline
from align.pipeline import load_config as load_pipeline
from align.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*/*.yaml"))


def test_there_are_configs_for_every_stage_directory():
    kinds = {p.parent.name for p in CONFIGS}
    assert kinds <= set(STAGES) | {"pipeline", "accelerate"}, kinds - set(STAGES)


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name in STAGES], ids=lambda p: p.name)
def test_stage_config_loads(path):
    load_config(STAGES[path.parent.name].config_class(), path)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "pipeline").glob("*.yaml")), ids=lambda p: p.name)
def test_pipeline_preset_builds_every_stage(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a preset names its stage configs and data from where it is, not the cwd
    pipeline = Pipeline(load_pipeline(path))
    for stage in pipeline.config.stages:
        config = pipeline.stage_config(stage)
        assert Path(config.out_dir) == pipeline.root / stage


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_config_names_a_distributed_type(path):
    config = yaml.safe_load(path.read_text())
    assert config["distributed_type"] in ("MULTI_GPU", "DEEPSPEED", "FSDP")
    assert config["num_processes"] >= 1


# ---------------------------------------------------------------- a docstring under every field


def stage_config_classes() -> list[type]:
    """Every registered stage's config class, once."""
    return list(dict.fromkeys(stage.config_class() for stage in STAGES.values()))


def nested_dataclasses(hint: typing.Any) -> list[type]:
    """The dataclasses a field's type names, also inside `X | None`, `list[X]`, `dict[str, X]`."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return [hint]
    return [cls for arg in typing.get_args(hint) for cls in nested_dataclasses(arg)]


def reachable_config_classes(roots: list[type]) -> list[type]:
    """Every config dataclass reachable from `roots` through their fields, each once, in walk order."""
    seen: list[type] = []
    todo = list(roots)
    while todo:
        cls = todo.pop(0)
        if cls in seen:
            continue
        seen.append(cls)
        hints = typing.get_type_hints(cls)
        todo += [nested for f in dataclasses.fields(cls) for nested in nested_dataclasses(hints[f.name])]
    return seen


def declaring_class(cls: type, name: str) -> type:
    """The class whose body declares field `name` last: a subclass that redeclares a field (a new default)
    owes it a docstring of its own."""
    return next(c for c in cls.__mro__ if name in c.__dict__.get("__annotations__", {}))


CONFIG_CLASSES = reachable_config_classes(stage_config_classes())


def test_the_walk_reaches_nested_settings():
    """Through a plain field, a list (SFT's data sources), a subclass (OnlineTraining) and ModelConfig."""
    names = {cls.__name__ for cls in CONFIG_CLASSES}
    assert {"DataSource", "SFTTraining", "LoraSettings", "PromptTuningSettings", "TrackingConfig",
            "GuardSettings", "OnlineTraining", "GenerationSettings"} <= names


def test_field_docstrings_reads_the_string_under_a_field():
    @dataclasses.dataclass
    class Example:
        documented: int = 1
        """One."""
        bare: int = 2
        x = 3
        """Under a plain assignment, not a field."""

    assert field_docstrings(Example) == {"documented": "One."}


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda cls: cls.__qualname__)
def test_every_config_field_has_a_docstring(cls):
    missing = [f"{owner.__module__}.{owner.__qualname__}.{f.name}" for f in dataclasses.fields(cls)
               for owner in [declaring_class(cls, f.name)]
               if not field_docstrings(owner).get(f.name, "").strip()]
    assert not missing, f"fields without a docstring (a string literal right under the field): {missing}"
