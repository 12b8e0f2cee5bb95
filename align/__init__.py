"""align: an RLHF and preference-tuning suite (QLoRA SFT, reward models, PPO, evaluation).

The Python API, the same functions the `align` command calls:

    from align import Pipeline, load_config
    result = Pipeline(load_config("smollm2-demo")  # a preset, or a file).run()
    print(result.metrics["aligned/reward_mean"])

    import align
    config = align.stage_config("sft", "smollm2-qlora", ["training.epochs=2"])
    figures = align.train_sft(config)

Kept light: the names below load on first use, so `import align` loads no deep-learning library.
"""

from __future__ import annotations

from typing import Any

from align.stages import STAGES

__version__ = "0.1.0"

# public name -> (module, attribute); each stage's function comes from the registry (align.stages)
_API = {
    "Pipeline": ("align.pipeline", "Pipeline"),
    "PipelineConfig": ("align.pipeline", "PipelineConfig"),
    "load_config": ("align.pipeline", "load_config"),
    "stage_config": ("align.stages", "stage_config"),
    **{s.api_name: tuple(s.entry.split(":")) for s in STAGES.values()},
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'align' has no attribute {name!r}")
    import importlib

    module, attr = _API[name]
    return getattr(importlib.import_module(module), attr)
