"""Configs of the TRL-backed recipes: DPO (preferences), GRPO and RLOO (prompts + a reward)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from align.core.config import check
from align.core.modeling import ModelConfig
from align.core.tracking import TrackingConfig


@dataclass
class RecipeTraining:
    epochs: float = 1.0
    max_steps: int = -1
    """Stop after this many optimiser steps; -1 = run `epochs`."""
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 5e-5
    lr_scheduler: Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = 0.0
    beta: float = 0.1
    """DPO: the β of the implicit reward (Rafailov et al. 2023: 0.1). GRPO/RLOO: the KL coefficient."""
    max_length: int = 512
    save_steps: int = 50
    seed: int = 42

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "max_length", "save_steps"):
            check(getattr(self, name) > 0, f"training.{name}", f"must be > 0, got {getattr(self, name)}")
        check(self.epochs > 0 or self.max_steps > 0, "training.epochs", "set epochs > 0 or max_steps > 0")
        check(self.max_steps == -1 or self.max_steps > 0, "training.max_steps", f"must be -1 (run epochs) or > 0, got {self.max_steps}")
        check(self.learning_rate > 0, "training.learning_rate", f"must be > 0, got {self.learning_rate}")
        check(0 <= self.warmup_ratio < 1, "training.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check(self.beta >= 0, "training.beta", f"must be >= 0, got {self.beta}")
        check(self.seed >= 0, "training.seed", f"must be >= 0, got {self.seed}")


@dataclass
class DPOData:
    train: str = "data/demo/rankings.jsonl"
    """Preferences, or rankings (each ranking gives all its (better, worse) pairs)."""
    eval: str | None = None
    eval_fraction: float = 0.1

    def __post_init__(self):
        check(0 <= self.eval_fraction < 1, "data.eval_fraction", f"must be in [0, 1), got {self.eval_fraction}")


@dataclass
class DPOConfig:
    out_dir: str = "runs/dpo"
    model: ModelConfig = field(default_factory=ModelConfig)
    """`model.adapter`: start the policy from the SFT adapter (the reference is then that policy, frozen)."""
    data: DPOData = field(default_factory=DPOData)
    training: RecipeTraining = field(default_factory=RecipeTraining)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass
class OnlineReward:
    model: str | None = "runs/reward"
    """A reward stage directory; its normalised reward scores each completion."""
    function: str | None = None
    """Or a Python `module:function(prompt, response) -> float`."""

    def __post_init__(self):
        check(self.model is not None or self.function is not None, "reward", "set reward.model or reward.function")


@dataclass
class OnlineData:
    prompts: str = "data/demo/prompts.jsonl"


@dataclass
class OnlineTraining(RecipeTraining):
    num_generations: int = 4
    """Completions per prompt: GRPO's group, RLOO's k (the leave-one-out baseline needs >= 2)."""
    max_new_tokens: int = 32
    temperature: float = 0.7
    beta: float = 0.05

    def __post_init__(self):
        super().__post_init__()
        check(self.num_generations >= 2, "training.num_generations", "needs >= 2 for a group baseline")
        check(self.max_new_tokens > 0, "training.max_new_tokens", f"must be > 0, got {self.max_new_tokens}")
        check(self.temperature > 0, "training.temperature", f"must be > 0, got {self.temperature}")


@dataclass
class OnlineConfig:
    """GRPO (Shao et al. 2024) and RLOO (Ahmadian et al. 2024) share this shape."""

    out_dir: str = "runs/grpo"
    model: ModelConfig = field(default_factory=ModelConfig)
    reward: OnlineReward = field(default_factory=OnlineReward)
    data: OnlineData = field(default_factory=OnlineData)
    training: OnlineTraining = field(default_factory=OnlineTraining)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
