"""The few API functions that are not a stage module's own `train`: typed configs by stage name,
and GRPO/RLOO under their own names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from align.core.config import load_config


def stage_config(stage: str, path: str | Path | None = None, overrides: Iterable[str] = ()) -> Any:
    """The typed config of one stage (sft, reward, ppo, dpo, grpo, rloo, eval) from YAML and overrides."""
    from align.pipeline import stage_entry

    cls, _ = stage_entry(stage)
    return load_config(cls, path, overrides)


def train_grpo(config: Any, **kw: Any) -> dict[str, Any]:
    from align.prefs.train import online

    return online(config, "grpo", **kw)


def train_rloo(config: Any, **kw: Any) -> dict[str, Any]:
    from align.prefs.train import online

    return online(config, "rloo", **kw)
