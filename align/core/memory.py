"""A stage's memory before it loads a model: one process's peak estimated from the model's shape and the
token budget of its largest forward pass, refused with one line when the machine has not that much available.

    model_shape         the sizes the estimate needs, from config.json and the safetensors files
    loading_bytes       the imports and the checkpoint read in full while it loads
    weight_bytes        the weights as loaded: 4-bit linear layers at ~0.56 bytes a weight, the rest fp32
    lora_weights        the weights of one LoRA adapter on every linear layer
    adapter_bytes       new LoRA adapters with their gradients and AdamW's moments
    lm_head_bytes       what the output layer adds to a training step: TRL's fused log-probs, or whole logits
    training_peak       the larger of loading and training (weights + adapters + activations + LM head)
    micro_batches       a process's share of the global batch cut into equal micro-batches within the budget
    check_training_fits a TRL stage's estimate for its largest micro-batch, refused when it cannot fit
    check_fits          the refusal: `... needs about X GB at its peak and Y GB is available: lower S (now V)`

Peak = the larger of loading (the imports + the checkpoint read in full + what it becomes) and training
(the imports + the weights + the adapters with their gradients and AdamW's moments + the activations of
the largest micro-batch (core.token_batches.activation_bytes) + the LM head's). On the CPU the C heap's
mmap threshold is fixed first (core.heap.large_buffers_from_mmap); without it glibc keeps each step's
freed activations resident and the peak is several GB above this estimate.

Calibrated on SmolLM2-135M NF4 + LoRA r=16 on the CPU (2026-12-05, peak RSS of the whole process, HH-RLHF
at max_length 1024, the longest records of the dev slice, 2 steps): SFT preset (2 x 1024 tokens a pass,
recomputed) estimate 3163 MB, measured 3095; DPO preset (1 pair = 2 x 1024 tokens a pass) estimate 3163,
measured 3127. Before (batch 8 in one pass): SFT without recomputation 8 x 932 tokens, estimate 26.4 GB,
killed by the kernel at 22 GB; DPO recomputed 16 x 968 tokens, estimate 8.1 GB, stopped at 14 GB, the rest
the heap's: one bare forward + backward of 2 x 1024 tokens (no optimiser) peaked at 6.5 GB with glibc's
dynamic mmap threshold, 3.0 GB with it fixed (3.1 with one row padded by 300 tokens).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, NamedTuple

from align.core.errors import AlignError
from align.core.token_batches import activation_bytes

FP32 = 4
RUNTIME_BYTES = 400 * 2**20  # torch, transformers, peft, bitsandbytes imported: 233 MB measured, plus slack
NF4_BYTES_PER_WEIGHT = 0.5625  # 4 bits + one fp32 absmax per 64 weights (double quantisation: less)
ADAPTER_BYTES_PER_WEIGHT = 4 * FP32  # a trained LoRA weight, its gradient and AdamW's two moments

# TRL 1.16's fused LM head (trl.trainer.utils.add_fused_lm_head) projects at most 4096 tokens x 32768
# vocabulary columns at a time; without Triton (the CPU) it folds a tile in torch, every position (prompt
# and padding too), and its backward holds ~7 tile-sized fp32 temporaries (a bare pass of 2 x 1024 tokens:
# 1.8 GB over the activations, 2026-12-05); the eighth copy stands for what a Trainer step holds beside it
FUSED_TILE_TOKENS, FUSED_TILE_COLUMNS, FUSED_TILE_COPIES = 4096, 32768, 8
# a head that returns whole logits (TRL's experimental ORPO): logits, their log-softmax for the NLL and for
# the log-probs, and the gradient, each (tokens, vocab) fp32
FULL_LOGIT_COPIES = 4

Head = Literal["none", "fused", "full"]


class Shape(NamedTuple):
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    file_bytes: int  # the checkpoint on disk
    weights: int  # parameters in the checkpoint
    kv_width: int = 0  # key/value heads x head size: one layer's K (or V) per token (PPO's KV cache)
    tied: bool = True  # the output layer is the embedding


def model_shape(model_dir: str | Path) -> Shape | None:
    """The sizes the estimate needs, from config.json and the safetensors files; None when not on disk."""
    directory = Path(model_dir)
    try:
        c = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        hidden, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
        sizes = hidden, int(c["intermediate_size"]), int(c["num_hidden_layers"]), int(c["vocab_size"])
        kv_width = int(c.get("num_key_value_heads") or heads) * int(c.get("head_dim") or hidden // heads)
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None
    file_bytes = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    dtype = c.get("dtype") or c.get("torch_dtype") or "float32"
    return Shape(*sizes, file_bytes, file_bytes // (2 if dtype in ("bfloat16", "float16") else 4), kv_width,
                 bool(c.get("tie_word_embeddings", True)))


def loading_bytes(shape: Shape) -> int:
    """Loading: the imports, the checkpoint read in full and what it becomes."""
    return RUNTIME_BYTES + 2 * shape.file_bytes


def weight_bytes(shape: Shape, model) -> int:
    """The weights of `model` (a ModelConfig) as loaded; full fine-tuning adds gradients and AdamW's moments."""
    embedding = shape.vocab * shape.hidden * (1 if shape.tied else 2)  # bitsandbytes keeps them fp32
    if model.quantization != "none":
        weights = embedding * FP32 + max(0, shape.weights - embedding) * NF4_BYTES_PER_WEIGHT
    else:
        weights = shape.weights * FP32
    return int(weights * 4 if model.tuning == "full" else weights)


def lora_weights(shape: Shape, r: int) -> int:
    """Weights of one LoRA adapter on every linear layer of every block (q, k, v, o, gate, up, down: r x (in +
    out) each, k and v at most hidden wide)."""
    return r * shape.layers * (10 * shape.hidden + 3 * shape.intermediate)


def adapter_bytes(shape: Shape, model) -> int:
    """A new LoRA adapter (lora_weights) with its gradients and AdamW's moments; 0 for other tunings."""
    if model.tuning != "lora":
        return 0
    return lora_weights(shape, model.lora.r) * ADAPTER_BYTES_PER_WEIGHT


def lm_head_bytes(tokens: int, vocab: int, head: Head) -> int:
    """What the output layer holds at the peak of a training step over `tokens` padded tokens."""
    if head == "fused":
        return min(tokens, FUSED_TILE_TOKENS) * min(vocab, FUSED_TILE_COLUMNS) * FP32 * FUSED_TILE_COPIES
    if head == "full":
        return tokens * vocab * FP32 * FULL_LOGIT_COPIES
    return 0


def training_peak(shape: Shape, model, tokens: int, *, recompute: bool, head: Head) -> int:
    """Peak bytes of one training process whose largest forward pass with gradients pads `tokens` tokens."""
    activations = tokens * activation_bytes(shape.hidden, shape.intermediate, shape.layers, recompute=recompute)
    training = (RUNTIME_BYTES + weight_bytes(shape, model) + adapter_bytes(shape, model) + activations
                + lm_head_bytes(tokens, shape.vocab, head))
    return int(max(loading_bytes(shape), training))


class MicroBatches(NamedTuple):
    size: int  # items in one forward pass of one process (TRL's per_device_train_batch_size)
    accumulation: int  # forward passes per optimiser step (TRL's gradient_accumulation_steps)


def micro_batches(batch_size: int, grad_accum: int, processes: int, max_tokens: int, item_tokens: int,
                  least: int = 1) -> MicroBatches:
    """A process's share of the global batch (batch_size / processes) in equal micro-batches of the most items
    that pad within max_tokens (item_tokens each at most), never fewer than `least`; the passes are
    accumulated, so an optimiser step still sees batch_size x grad_accum items over all processes.

    Equal sizes keep a loss averaged per micro-batch (DPO's, KTO's) the average over the whole batch."""
    share = batch_size // processes
    fit = max(least, max_tokens // max(1, item_tokens))
    sizes = [d for d in range(1, share + 1) if share % d == 0 and d >= min(least, share)]
    size = max((d for d in sizes if d <= fit), default=min(sizes))
    return MicroBatches(size, grad_accum * (share // size))


def check_training_fits(what: str, config, micro: MicroBatches, item_tokens: int, *, least: int = 1,
                        length: str = "training.max_length", head: Head = "fused") -> None:
    """Refuse, before the model loads, a TRL stage whose largest forward pass (micro.size items of item_tokens)
    would take its estimated peak (training_peak) past the memory available; on a GPU, no check. The advice
    names the budget, or `length` once a micro-batch is down to `least` items."""
    if on_cuda():
        return
    from align.core.model_paths import resolve_model_path

    shape = model_shape(resolve_model_path(config.model.name))
    if shape is None:
        return
    t = config.training
    estimate = training_peak(shape, config.model, micro.size * item_tokens, recompute=t.gradient_checkpointing,
                             head=head)
    check_fits(what, estimate, available_bytes(),
               budget_advice(config, one_item=micro.size <= least, length=length))


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def local_processes() -> int:
    """Training processes on this machine (accelerate and torchrun say so); each takes its own memory."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def check_fits(what: str, estimate: int | None, available: int | None, advice: str, phase: str = "") -> None:
    """Refuse, before the model loads, a run whose estimated peak (per process, times this machine's processes)
    exceeds the memory available, in one line that ends with `advice` (`lower SETTING (now VALUE)`); `phase`
    names the part of the run that sets the peak, where the stage knows it."""
    if estimate is None or available is None:
        return
    needed = estimate * local_processes()
    if needed > available:
        at = f" ({phase})" if phase else ""
        raise AlignError(f"{what} needs about {needed / 2**30:.1f} GB at its peak{at} and {available / 2**30:.1f} GB "
                         f"is available: {advice}")


def on_cuda() -> bool:
    """A GPU trains: its activations are the GPU's, not this estimate's (no check)."""
    import torch

    return torch.cuda.is_available()


def budget_advice(config, *, one_item: bool, length: str) -> str:
    """`lower SETTING (now VALUE)` for a stage whose micro-batches come from training.max_tokens_per_batch: the
    budget while a micro-batch holds more than the fewest items it may, else the item's length (`length`, a
    dotted setting); and recomputation when it is off."""
    t = config.training
    if one_item:
        value = config
        for part in length.split("."):
            value = getattr(value, part)
        setting = f"{length} (now {value})"
    else:
        setting = f"training.max_tokens_per_batch (now {t.max_tokens_per_batch})"
    also = "" if t.gradient_checkpointing else ", or set training.gradient_checkpointing=true"
    return f"lower {setting}{also}"
