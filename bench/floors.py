"""The least a phase of PPO can cost on this machine (issue #24): its matmul FLOPs over this machine's
measured fp32 GEMM rate, and for sampling also the bytes every step must read over the measured memory
bandwidth. A phase's achieved rate is its FLOPs over its seconds: the work the algorithm needs, so work
spent on padding or done twice counts against it.

    block_weights    the weights of one decoder block's projections (and of a LoRA adapter on each)
    forward_flops    a row's forward over new positions after cached ones: 2 FLOPs a weight a token, the
                     output layer where logits are wanted, causal attention
    sampling_flops   sampling: each prompt's prefill, then one token a row a step against the KV cache
    step_bytes       what one forward of sampling reads: every weight once, shared by the batch
    sampling_floor_s sampling's bandwidth floor: every forward reads the weights and each row's KV cache
    significant      a figure to 3 significant digits, for the reports
    gemm_gflops      this machine's fp32 GEMM rate on the model's own shapes (measured)
    copy_gbps        this machine's memory bandwidth: bytes read and written a second by a large copy
                     (measured, STREAM's convention)
    machine_rates    both measured rates, as the reports record them
    achieved         a phase's FLOPs over its seconds, and its share of the GEMM rate
    sampling_report  sampling's seconds against its floors: achieved rate, FLOP and bandwidth floors, x_floor
"""

from __future__ import annotations

import time
from typing import Sequence

from align.core.memory import FP32, Shape


def block_weights(shape: Shape, lora_r: int = 0) -> int:
    """Weights a token multiplies through in one block: q and o hidden x hidden, k and v hidden x kv_width,
    gate, up and down hidden x intermediate; a LoRA adapter of rank lora_r adds r x (in + out) to each."""
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_width or shape.hidden
    return 2 * h * h + 2 * h * kv + 3 * h * i + lora_r * (9 * h + 2 * kv + 3 * i)


def forward_flops(shape: Shape, tokens: int, *, logits: int | None = None, context: int = 0, lora_r: int = 0) -> int:
    """FLOPs of one row's forward over `tokens` new positions that follow `context` cached ones: 2 a weight a
    token through the blocks, the output layer at `logits` positions (default: all), and causal attention
    (each query against the keys up to it: QKᵀ and the weighted sum of V, 4 x hidden a key a block).
    Embedding lookups, norms and activations are not matmuls and are left out."""
    logits = tokens if logits is None else logits
    keys = tokens * context + tokens * (tokens + 1) // 2
    return (2 * shape.layers * block_weights(shape, lora_r) * tokens + 2 * shape.hidden * shape.vocab * logits
            + 4 * shape.layers * shape.hidden * keys)


def sampling_flops(shape: Shape, prompt_lengths: Sequence[int], steps: int, lora_r: int = 0) -> int:
    """FLOPs of sampling `steps` tokens after each prompt: the prefill (logits at its last position give the
    first token), then steps - 1 forwards of one token against the KV cache."""
    total = 0
    for q in prompt_lengths:
        total += forward_flops(shape, q, logits=1, lora_r=lora_r)
        total += sum(forward_flops(shape, 1, context=q + s, lora_r=lora_r) for s in range(steps - 1))
    return total


def step_bytes(shape: Shape, bytes_per_weight: float = FP32, lora_r: int = 0) -> int:
    """Bytes one forward reads at least: every block's weights and the output layer's, once for the whole
    batch (the rows share each read)."""
    weights = shape.layers * block_weights(shape, lora_r) + shape.hidden * shape.vocab
    return int(weights * bytes_per_weight)


def sampling_floor_s(shape: Shape, prompt_lengths: Sequence[int], steps: int, bandwidth_gbps: float,
                     bytes_per_weight: float = FP32, lora_r: int = 0) -> float:
    """Seconds sampling needs at least to read its bytes: `steps` forwards (the prefill and steps - 1
    decode steps) each read the weights once, and each decode step reads every row's KV cache so far."""
    kv_per_token = 2 * shape.layers * (shape.kv_width or shape.hidden) * FP32  # K and V, every block
    cache = sum(kv_per_token * (q + s) for q in prompt_lengths for s in range(steps - 1))
    return (steps * step_bytes(shape, bytes_per_weight, lora_r) + cache) / (bandwidth_gbps * 1e9)


def significant(x: float, digits: int = 3) -> float:
    """x to `digits` significant figures: a tiny model's floors are microseconds, not 0.0."""
    return float(f"{x:.{digits}g}")


def machine_rates(shape: Shape) -> dict[str, float]:
    """This machine's GEMM rate on the model's shapes and its copy bandwidth, with torch's current threads."""
    return {"gemm_gflops": round(gemm_gflops(shape), 2), "copy_gbps": round(copy_gbps(), 2)}


def achieved(flops: int, seconds: float, rates: dict[str, float]) -> dict[str, float | None]:
    """GFLOP, achieved GFLOP/s and its share of the GEMM rate (None for a phase that took under 1 ms)."""
    rate = flops / seconds / 1e9 if seconds > 1e-3 and flops else None
    return {"gflop": significant(flops / 1e9), "achieved_gflops": None if rate is None else round(rate, 2),
            "share_of_gemm_rate": None if rate is None else round(rate / rates["gemm_gflops"], 3)}


def sampling_report(shape: Shape, prompt_lengths: Sequence[int], steps: int, lora_r: int, seconds: float,
                    rates: dict[str, float]) -> dict[str, float | None]:
    """Sampling `steps` tokens after these prompts in `seconds`, against its floors: the achieved rate, the FLOP
    floor at the GEMM rate, the bandwidth floor at the copy rate, and seconds over the larger floor."""
    flops = sampling_flops(shape, prompt_lengths, steps, lora_r)
    flop_floor = flops / (rates["gemm_gflops"] * 1e9)
    bandwidth_floor = sampling_floor_s(shape, prompt_lengths, steps, rates["copy_gbps"], lora_r=lora_r)
    return {**achieved(flops, seconds, rates), "flop_floor_s": significant(flop_floor),
            "bandwidth_floor_s": significant(bandwidth_floor),
            "x_floor": round(seconds / max(flop_floor, bandwidth_floor), 2)}


def gemm_gflops(shape: Shape, tokens: int = 256, seconds: float = 1.0) -> float:
    """fp32 GFLOP/s of the matmuls one block and the output layer run for `tokens` tokens, (tokens x in) @
    (in x out) at the model's own shapes, repeated for about `seconds` after one untimed round, with torch's
    current thread count."""
    import torch

    h, i, kv = shape.hidden, shape.intermediate, shape.kv_width or shape.hidden
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h), (h, shape.vocab)]
    inputs = {n: torch.randn(tokens, n) for n in {h, i}}
    weights = [torch.randn(a, b) for a, b in shapes]
    flops = sum(2 * tokens * a * b for a, b in shapes)

    def one_round() -> None:
        for (a, _), w in zip(shapes, weights):
            torch.mm(inputs[a], w)

    one_round()
    rounds, start = 0, time.perf_counter()
    while rounds == 0 or time.perf_counter() - start < seconds:
        one_round()
        rounds += 1
    return flops * rounds / (time.perf_counter() - start) / 1e9


def copy_gbps(megabytes: int = 256, seconds: float = 0.5) -> float:
    """GB/s of memory traffic of a large fp32 copy (bytes read plus bytes written), repeated for about
    `seconds` after one untimed copy."""
    import torch

    source = torch.ones(megabytes * 2**20 // FP32)
    target = torch.empty_like(source)
    target.copy_(source)
    copies, start = 0, time.perf_counter()
    while copies == 0 or time.perf_counter() - start < seconds:
        target.copy_(source)
        copies += 1
    return 2 * source.numel() * FP32 * copies / (time.perf_counter() - start) / 1e9
