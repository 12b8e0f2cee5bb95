"""SFTConfig: every knob of stage 1, grouped by concern, each with its default and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from align.core.config import check
from align.core.input_paths import InputPath
from align.core.modeling import ModelConfig
from align.core.tracking import TrackingConfig


@dataclass
class DataSource:
    path: InputPath
    """An instructions file (jsonl/json/csv/parquet, optionally .gz) or a saved dataset dir."""
    weight: float = 1.0
    """Records taken per record in the file: 0.5 samples half, 2.0 repeats each twice."""

    def __post_init__(self):
        check(self.weight > 0, "weight", f"must be > 0, got {self.weight}")


@dataclass
class SFTData:
    train: list[DataSource] = field(default_factory=lambda: [DataSource("data/demo/sft.jsonl")])
    """One or more sources, mixed by weight. A bare path is a source of weight 1."""
    eval: InputPath | None = None
    """Held-out instructions; when unset, `eval_fraction` of the training records is held out."""
    eval_fraction: float = 0.1
    """Share of the mixed training records held out for eval when `eval` is unset."""
    template: Literal["chat", "alpaca", "flan"] = "chat"
    """How a record becomes model input: the model's chat template, the Alpaca prompt, or FLAN zero-shot."""
    system_prompt: str | None = None
    """A system message put before every conversation (chat template only)."""
    max_records: int | None = None
    """Use at most this many mixed training records (quick runs)."""
    too_long: Literal["truncate", "drop"] = "truncate"
    """A record longer than training.max_length tokens (counted with the tokenizer and template, before
    the model loads): `truncate` trains on its first max_length tokens, as TRL's SFTTrainer and
    LLaMA-Factory's cutoff_len do, so a long answer still teaches its start; `drop` leaves it out. A record
    whose prompt alone fills max_length has no response token left to learn and is dropped either way.
    The counts are logged and go to metrics.json (`data/too_long_truncated`, `data/too_long_dropped`)."""

    def __post_init__(self):
        check(bool(self.train), "data.train", "needs at least one source")
        check(0 <= self.eval_fraction < 1, "data.eval_fraction", f"must be in [0, 1), got {self.eval_fraction}")
        check(self.max_records is None or self.max_records > 0, "data.max_records", "must be > 0")


@dataclass
class SFTTraining:
    epochs: float = 1.0
    """Passes over the training records (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Stop after this many optimiser steps; -1 = run `epochs`."""
    batch_size: int = 8
    """Sequences per forward pass, over all processes: under `accelerate launch` with n processes each
    takes batch_size / n, so a run card trains alike on any number of them."""
    grad_accum: int = 1
    """Forward passes per optimiser step; the batch of one step is batch_size x grad_accum."""
    learning_rate: float = 2e-4
    """AdamW peak learning rate of LoRA or full tuning; 2e-4 is QLoRA's for 7B-13B models with LoRA. A soft
    prompt trains at its own, `model.prompt_tuning.learning_rate`."""
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after warmup (transformers' scheduler of that name); cosine decays to zero."""
    warmup_ratio: float = 0.03
    """Share of steps spent warming the learning rate up from zero."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay; 0 = none (transformers' default too)."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    max_length: int = 512
    """Tokens per sequence after the template; `data.too_long` says what happens to a longer record."""
    completion_only_loss: bool = True
    """Loss on the response tokens only (the prompt is context, not a target)."""
    max_tokens_per_batch: int = 4096
    """Padded tokens of one forward pass: each process's share of `batch_size` goes through the model in equal
    micro-batches of at most max_tokens_per_batch // max_length sequences (at least one), their gradients
    accumulated, so a step still trains on batch_size x grad_accum sequences. Activations and the LM head's
    log-probabilities grow with it: on SmolLM2-135M NF4 + LoRA on the CPU with gradient_checkpointing,
    2048 tokens peak at ~3 GB. The stage refuses, before the model loads, a budget its estimate says will not fit."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: ~0.24 MB a token kept instead of ~3.1 MB on SmolLM2-135M (fp32),
    for ~30-50% more time. Worth it on GPUs, and on CPUs at long max_length."""
    eval_steps: int | None = None
    """Evaluate every this many steps; unset = once per epoch and at the end."""
    save_steps: int = 50
    """Checkpoint every this many steps; `--resume` continues from the newest."""
    save_total_limit: int = 2
    """Checkpoints kept on disk."""
    seed: int = 42
    """Seeds the data mix and held-out split, the new adapter's initial weights and the trainer's shuffling."""

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "max_length", "max_tokens_per_batch", "save_steps"):
            check(getattr(self, name) > 0, f"training.{name}", f"must be > 0, got {getattr(self, name)}")
        check(self.learning_rate > 0, "training.learning_rate", f"must be > 0, got {self.learning_rate}")
        check(self.epochs > 0 or self.max_steps > 0, "training.epochs", "set epochs > 0 or max_steps > 0")
        check(self.max_steps == -1 or self.max_steps > 0, "training.max_steps", f"must be -1 (run epochs) or > 0, got {self.max_steps}")
        check(0 <= self.warmup_ratio < 1, "training.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check(self.weight_decay >= 0, "training.weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.max_grad_norm >= 0, "training.max_grad_norm", f"must be >= 0 (0 = no clipping), got {self.max_grad_norm}")
        check(self.eval_steps is None or self.eval_steps > 0, "training.eval_steps", f"must be > 0 or unset, got {self.eval_steps}")
        check(self.save_total_limit > 0, "training.save_total_limit", f"must be > 0, got {self.save_total_limit}")
        check(self.seed >= 0, "training.seed", f"must be >= 0 (numpy refuses negative seeds), got {self.seed}")


@dataclass
class SFTConfig:
    out_dir: str = "runs/sft"
    """The stage output directory (DESIGN.md contract)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model and what trains on it (LoRA on a 4-bit base by default: QLoRA)."""
    data: SFTData = field(default_factory=SFTData)
    """Which instructions, how they are mixed, held out and templated."""
    training: SFTTraining = field(default_factory=SFTTraining)
    """Optimisation and checkpointing, passed to TRL's SFTTrainer."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """W&B and how often training figures are logged."""

    @property
    def learning_rate(self) -> float:
        """The rate of what trains: the soft prompt's own with `model.tuning: prompt_tuning`."""
        if self.model.tuning == "prompt_tuning":
            return self.model.prompt_tuning.learning_rate
        return self.training.learning_rate
