"""align: an RLHF and preference-tuning suite (QLoRA SFT, reward models, PPO, evaluation).

The Python API, the same functions the `align` command calls:

    from align import Pipeline, load_config
    result = Pipeline(load_config("configs/pipeline/smollm2-demo.yaml")).run()
    print(result.metrics["aligned/reward_mean"])

    import align
    config = align.stage_config("sft", "configs/sft/smollm2-qlora.yaml", ["training.epochs=2"])
    figures = align.train_sft(config)

Kept light: the names below load on first use, so `import align` loads no deep-learning library.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_API = {
    "Pipeline": ("align.pipeline", "Pipeline"),
    "PipelineConfig": ("align.pipeline", "PipelineConfig"),
    "load_config": ("align.pipeline", "load_config"),
    "stage_config": ("align.api", "stage_config"),
    "train_sft": ("sft.train", "train"),
    "train_reward": ("reward.train", "train"),
    "train_ppo": ("align.ppo.train", "train"),
    "train_dpo": ("align.prefs.train", "dpo"),
    "train_grpo": ("align.api", "train_grpo"),
    "train_rloo": ("align.api", "train_rloo"),
    "evaluate": ("align.eval.run", "evaluate"),
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'align' has no attribute {name!r}")
    import importlib

    module, attr = _API[name]
    return getattr(importlib.import_module(module), attr)
