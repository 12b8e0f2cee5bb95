"""RewardConfig: stage 2's knobs, grouped by concern."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from align.core.config import check
from align.core.input_paths import InputPath
from align.core.modeling import ModelConfig
from align.core.tracking import TrackingConfig


@dataclass
class RewardData:
    train: InputPath = "data/demo/rankings.jsonl"
    """Rankings or preferences (the kind is read from the first record)."""
    eval: InputPath | None = None
    """Held-out rankings or preferences; when unset, `eval_fraction` of the training prompts."""
    eval_fraction: float = 0.1
    """Share of the training prompts (rankings, each with all its completions) held out when `eval` is unset."""
    reference: InputPath | None = None
    """Rankings/preferences whose completions set the normaliser's mean/std; default: the eval set."""
    max_length: int = 512
    """Tokens per prompt + completion; longer ones lose their start (the completion's end is kept)."""

    def __post_init__(self):
        check(0 <= self.eval_fraction < 1, "data.eval_fraction", f"must be in [0, 1), got {self.eval_fraction}")
        check(self.max_length > 0, "data.max_length", "must be > 0")


@dataclass
class RewardTraining:
    epochs: float = 1.0
    """Passes over the training prompts."""
    batch_size: int = 8
    """Prompts (rankings) per step, over all processes (each of n takes batch_size / n); each brings its
    K completions, all scored in one forward pass."""
    grad_accum: int = 1
    """Batches per optimiser step; one step sees batch_size x grad_accum prompts."""
    learning_rate: float = 1e-4
    """AdamW peak learning rate (head and adapters)."""
    lr_scheduler: Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule over the optimiser steps (transformers' `get_scheduler` of that name)."""
    warmup_ratio: float = 0.03
    """Share of the optimiser steps spent warming the learning rate up from zero."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay; 0 = none."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm, every optimiser step; must be > 0."""
    use_margin: bool = False
    """Subtract each preference's `margin` inside the sigmoid (Llama 2's margin loss)."""
    save_steps: int = 50
    """Checkpoint every this many optimiser steps; `--resume` continues from the newest."""
    eval_batch_size: int = 16
    """Completions per forward pass when scoring (at most; `max_tokens_per_batch` also bounds it)."""
    max_tokens_per_batch: int = 2048
    """Tokens per micro-batch: padded tokens (completions x the longest of them) in one forward pass, in
    training and scoring. A batch's completions are sorted by length and cut into micro-batches within
    this budget; the K-wise loss still covers the whole batch (its gradient is exact, not an average of
    micro-batch losses). Activations grow with it: on SmolLM2-135M NF4 + LoRA on the CPU, 2.1 MB a token
    (2048: ~5 GB peak), 0.16 MB with gradient_checkpointing (2048: 1.5 GB). A completion longer than the
    budget goes alone (up to data.max_length). The stage refuses a budget its estimate says will not fit."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, about 30% more time. A batch holds every
    completion of every ranking, so on GPUs with long texts this is usually on."""
    backward_precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Precision of the backward pass's products through the frozen base weights (the LoRA layers' input
    gradients; core/fused_lora.py). `auto`: bf16 on a CPU with AMX, where they run ~3x faster, else fp32. The
    forward pass, and so rewards and the loss, stays in the model's dtype. `fp32` for gradients exact to fp32
    rounding."""
    seed: int = 42
    """Seeds the held-out split, a fresh head's or adapter's initial weights and each epoch's shuffle."""
    ensemble: int = 1
    """Reward models trained in this run: K > 1 trains K members one after another on one base, each its own
    LoRA adapter and head, member i's initial weights seeded `seed + i` and its data order its own (member 0
    is the single model of `seed`; the held-out split stays `seed`'s), saved under `ensemble/` with their own
    normalisers. PPO, `align eval` and `align reward score` combine them by their objective (mean, uwo, wco)."""
    bootstrap: bool = False
    """With `ensemble` > 1: each member trains on its own resample, with replacement, of the training
    prompts (as many as there are), so members also differ in what they saw."""

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "save_steps", "eval_batch_size", "max_tokens_per_batch"):
            check(getattr(self, name) > 0, f"training.{name}", f"must be > 0, got {getattr(self, name)}")
        check(self.epochs > 0, "training.epochs", f"must be > 0, got {self.epochs}")
        check(self.learning_rate > 0, "training.learning_rate", f"must be > 0, got {self.learning_rate}")
        check(0 <= self.warmup_ratio < 1, "training.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check(self.weight_decay >= 0, "training.weight_decay", f"must be >= 0, got {self.weight_decay}")
        # clipping to a norm of 0 zeroes every gradient: training would silently do nothing
        check(self.max_grad_norm > 0, "training.max_grad_norm", f"must be > 0, got {self.max_grad_norm}")
        check(self.seed >= 0, "training.seed", f"must be >= 0, got {self.seed}")
        check(self.ensemble >= 1, "training.ensemble", f"must be >= 1 (1 = one reward model), got {self.ensemble}")


@dataclass
class RewardConfig:
    out_dir: str = "runs/reward"
    """The stage output directory (DESIGN.md contract); PPO's, GRPO's and RLOO's `reward.model` default to it."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """`model.tuning`: `lora` (QLoRA on a 4-bit base, head trained in full; default), `head`
    (only the head, on a frozen backbone), or `full`. `model.adapter` starts from the SFT adapter."""
    data: RewardData = field(default_factory=RewardData)
    """Which rankings train, which are held out, which set the normaliser."""
    training: RewardTraining = field(default_factory=RewardTraining)
    """Optimisation and checkpointing of our own training loop."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """W&B and how often training figures are logged."""

    def __post_init__(self):
        # the members share one base as LoRA adapters with their heads (in PPO too)
        check(self.training.ensemble == 1 or self.model.tuning == "lora", "training.ensemble",
              f"an ensemble's members are LoRA adapters on one base: set model.tuning=lora (now {self.model.tuning!r})")
