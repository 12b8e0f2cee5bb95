"""The reward stage's memory before it loads a model: an estimate of its peak from the model's size
and the token budget (align.core.memory's arithmetic), refused when it cannot fit in the memory the
machine has available.

Peak = the larger of loading (the imports + the checkpoint read in full + what it becomes) and
training (the imports + the weights as loaded, 4-bit linear layers at ~0.56 bytes a weight and the
rest fp32, + optimiser state for what trains + the activations of the largest micro-batch). The
largest micro-batch pads max(training.max_tokens_per_batch, data.max_length) tokens: a completion
longer than the budget goes alone. On SmolLM2-135M NF4 + LoRA r=16 on the CPU, 2048 tokens with
recomputed activations (2026-12-05): estimate 1460 MB (its loading term), measured peak RSS 1536 MB,
reached while loading (1.0-1.3 GB while training). Its adapters (80 MB there) are not counted, as
when it was measured; the LM-head stages' estimate (align.core.memory.training_peak) counts them.
"""

from __future__ import annotations

from pathlib import Path

from align.core.memory import (
    RUNTIME_BYTES,
    available_bytes,
    check_fits as refuse_unless_fits,
    loading_bytes,
    model_shape,
    on_cuda,
    weight_bytes,
)
from align.core.token_batches import activation_bytes


def estimate_peak_bytes(config, model_dir: str | Path) -> int | None:
    """Peak resident bytes of one training process, or None when the model's shape is not on disk."""
    shape = model_shape(model_dir)
    if shape is None:
        return None
    tokens = max(config.training.max_tokens_per_batch, config.data.max_length)
    activations = tokens * activation_bytes(shape.hidden, shape.intermediate, shape.layers,
                                            recompute=config.training.gradient_checkpointing)
    return int(max(loading_bytes(shape), RUNTIME_BYTES + weight_bytes(shape, config.model) + activations))


def check_fits(config, model_dir: str | Path) -> None:
    """Refuse, before the model loads, a run whose estimated peak exceeds the memory available to it
    (each process on this machine takes its own). On a GPU the activations are the GPU's, not this
    estimate's."""
    if on_cuda():
        return
    t = config.training
    setting = ("data.max_length", config.data.max_length) if config.data.max_length > t.max_tokens_per_batch \
        else ("training.max_tokens_per_batch", t.max_tokens_per_batch)
    also = "" if t.gradient_checkpointing else ", or set training.gradient_checkpointing=true"
    refuse_unless_fits("the reward model", estimate_peak_bytes(config, model_dir), available_bytes(),
                       f"lower {setting[0]} (now {setting[1]}){also}")
