"""The reward stage's memory before it loads a model: an estimate of its peak from the model's size
and the token budget, refused when it cannot fit in the memory the machine has available.

Peak = the larger of loading (the imports + the checkpoint read in full + what it becomes) and
training (the imports + the weights as loaded, 4-bit linear layers at ~0.56 bytes a weight and the
rest fp32, + optimiser state for what trains + the activations of the largest micro-batch). The
largest micro-batch pads max(training.max_tokens_per_batch, data.max_length) tokens: a completion
longer than the budget goes alone. On SmolLM2-135M NF4 + LoRA r=16 on the CPU, 2048 tokens with
recomputed activations (2026-12-05): estimate 1460 MB (its loading term), measured peak RSS 1536 MB,
reached while loading (1.0-1.3 GB while training).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from align.core.errors import AlignError
from align.core.token_batches import activation_bytes

RUNTIME_BYTES = 400 * 2**20  # torch, transformers, peft, bitsandbytes imported: 233 MB measured, plus slack
NF4_BYTES_PER_WEIGHT = 0.5625  # 4 bits + one fp32 absmax per 64 weights (double quantisation: less)


def estimate_peak_bytes(config, model_dir: str | Path) -> int | None:
    """Peak resident bytes of one training process, or None when the model's shape is not on disk."""
    directory = Path(model_dir)
    try:
        shape = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        hidden, intermediate = int(shape["hidden_size"]), int(shape["intermediate_size"])
        layers, vocab = int(shape["num_hidden_layers"]), int(shape["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    file_bytes = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    dtype = shape.get("dtype") or shape.get("torch_dtype") or "float32"
    weights = file_bytes // (2 if dtype in ("bfloat16", "float16") else 4)  # parameters in the checkpoint
    embedding = vocab * hidden
    if config.model.quantization != "none":
        weight_bytes = embedding * 4 + max(0, weights - embedding) * NF4_BYTES_PER_WEIGHT
    else:
        weight_bytes = weights * 4
    if config.model.tuning == "full":
        weight_bytes *= 4  # gradients and AdamW's two moments
    tokens = max(config.training.max_tokens_per_batch, config.data.max_length)
    activations = tokens * activation_bytes(hidden, intermediate, layers,
                                            recompute=config.training.gradient_checkpointing)
    loading = RUNTIME_BYTES + 2 * file_bytes
    return int(max(loading, RUNTIME_BYTES + weight_bytes + activations))


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits(config, model_dir: str | Path) -> None:
    """Refuse, before the model loads, a run whose estimated peak exceeds the memory available to it
    (each process on this machine takes its own). On a GPU the activations are the GPU's, not this
    estimate's."""
    import torch

    if torch.cuda.is_available():
        return
    estimate, available = estimate_peak_bytes(config, model_dir), available_bytes()
    if estimate is None or available is None:
        return
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if estimate * processes <= available:
        return
    t = config.training
    setting = ("data.max_length", config.data.max_length) if config.data.max_length > t.max_tokens_per_batch \
        else ("training.max_tokens_per_batch", t.max_tokens_per_batch)
    also = "" if t.gradient_checkpointing else ", or set training.gradient_checkpointing=true"
    raise AlignError(f"the reward model needs about {estimate * processes / 2**30:.1f} GB at its peak and "
                     f"{available / 2**30:.1f} GB is available: lower {setting[0]} (now {setting[1]}){also}")
