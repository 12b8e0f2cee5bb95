"""PPO's memory before it loads a model: an estimate of one process's peak from the model's shape, the
rollout and the token budget, refused with one line when it cannot fit in the memory available.

Peak = the imports + the larger of loading (the checkpoint read in full + what it becomes) and training:
the weights as loaded (4-bit linear layers at ~0.56 bytes a weight, the rest fp32), four LoRA adapters
(the two that train with gradients, AdamW's moments and the update's snapshot), plus the largest of
three phases, one at a time:

    generation   batch_size / processes rows x (data.max_prompt_length + generation.max_new_tokens) of KV
                 cache, the prompts' prefill and its packed pass's attention mask (core.decoding), a step's
                 logits with what the draw derives from them, and with generation.working_copy the copy of
                 the weights sampling runs on (core.sampling_weights.copy_bytes)
    no-grad      a micro-batch of the passes over the rollout (π_old, π_ref, V, r): one layer's
                 activations at a time, and its logits (rows x response tokens x vocab) in three copies
    update       a micro-batch's activations kept for backward (core.token_batches.activation_bytes),
                 and its logits with their softmax, log-softmax and gradients

A micro-batch pads at most max(training.max_tokens_per_batch, the longest row) tokens, a longest row being
data.max_prompt_length + generation.max_new_tokens; its logits cover at most its rows x (max_new_tokens + 1)
positions. """

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from align.core.memory import (FP32, RUNTIME_BYTES, Shape, available_bytes, check_fits as refuse, loading_bytes,
                               lora_weights, model_shape, on_cuda, weight_bytes)
from align.core import decoding, sampling_weights
from align.core.token_batches import activation_bytes

LORA_ADAPTERS = 4  # policy, value, reward, reference (the last two only with an SFT or reward adapter)
TRAINED_BYTES_PER_WEIGHT = FP32 * 7  # weight, gradient, AdamW's two moments, the snapshot of weight + moments
# (hidden, intermediate)-sized values a token holds in one layer of a no-grad forward, the layer's transients:
# SmolLM2's prefill of 32 x 880 tokens took 0.5 GB beside its KV cache and sampling logits (2026-12-05)
FORWARD_VALUES_PER_TOKEN = (4, 2)
UPDATE_LOGIT_COPIES = 5  # logits, scaled, log-softmax (kept), entropy's softmax, a gradient: (rows, T, V) each
NO_GRAD_LOGIT_COPIES = 3  # logits, scaled, log-softmax


class Estimate(NamedTuple):
    """Bytes of one process: its peak and the phases that make it."""

    loading: int
    resident: int  # the imports, weights and adapters: held throughout training
    generation: int
    no_grad: int
    update: int

    @property
    def peak(self) -> int:
        return max(self.loading, self.resident + max(self.generation, self.no_grad, self.update))

    @property
    def phase(self) -> str:
        """The phase that sets the peak."""
        if self.loading >= self.resident + max(self.generation, self.no_grad, self.update):
            return "loading"
        return max(("generation", "no_grad", "update"), key=lambda name: getattr(self, name))


def estimate(config, shape: Shape, processes: int = 1) -> Estimate:
    """The phases of one of `processes` PPO processes on the CPU (fp32 compute), in bytes."""
    p, s = config.training, config.generation
    H, I, L, V = shape.hidden, shape.intermediate, shape.layers, shape.vocab
    weights = weight_bytes(shape, config.model)
    adapters = lora_weights(shape, config.model.lora.r) * (LORA_ADAPTERS * FP32 + 2 * TRAINED_BYTES_PER_WEIGHT)
    forward_values = (FORWARD_VALUES_PER_TOKEN[0] * H + FORWARD_VALUES_PER_TOKEN[1] * I) * FP32  # a token, one layer

    rows = p.batch_size // processes  # generated at once (the held-out answers too)
    longest = config.data.max_prompt_length + s.max_new_tokens
    kv_cache = rows * longest * 2 * L * shape.kv_width * FP32
    prefill = rows * config.data.max_prompt_length * forward_values
    packed = min(rows * config.data.max_prompt_length, decoding.PACKED_TOKENS)  # a longer row runs alone, unmasked
    packed_mask = packed * (packed + config.data.max_prompt_length) * (1 + FP32)  # boolean, and SDPA's float copy
    copy = sampling_weights.copy_bytes(shape, config.model.quantization != "none") if s.working_copy else 0
    step_logits = rows * V * (3 * FP32 + 2 * 8)  # logits, log-softmax, probabilities; float64 ones and their sums
    generation = kv_cache + prefill + packed_mask + step_logits + copy

    micro_rows = p.mini_batch_size // processes // p.grad_accum
    tokens = max(p.max_tokens_per_batch, longest)  # a row over the budget goes alone
    logit_rows = min(tokens + micro_rows, micro_rows * (s.max_new_tokens + 1))  # positions that get logits
    one_layer = tokens * forward_values
    kept_hidden = tokens * H * FP32  # a reward head on the base reads the reference pass's last hidden states
    no_grad = one_layer + kept_hidden + logit_rows * V * FP32 * NO_GRAD_LOGIT_COPIES
    kept = tokens * activation_bytes(H, I, L, recompute=p.gradient_checkpointing)
    update = kept + logit_rows * V * FP32 * UPDATE_LOGIT_COPIES
    return Estimate(loading_bytes(shape), int(RUNTIME_BYTES + weights + adapters),
                    int(generation), int(no_grad), int(update))


def advice(config, phase: str) -> str:
    """`lower SETTING (now VALUE)`: what shrinks the phase that sets the peak."""
    p, s, d = config.training, config.generation, config.data
    if phase == "loading":
        return f"the model ({config.model.name}) is too large to load here"
    if phase == "generation":
        longer = ("data.max_prompt_length", d.max_prompt_length) if d.max_prompt_length >= s.max_new_tokens \
            else ("generation.max_new_tokens", s.max_new_tokens)
        copy = ", or set generation.working_copy=false" if s.working_copy else ""
        return f"lower {longer[0]} (now {longer[1]}) or training.batch_size (now {p.batch_size}){copy}"
    if d.max_prompt_length + s.max_new_tokens > p.max_tokens_per_batch:  # the longest row sets the micro-batch
        setting = f"data.max_prompt_length (now {d.max_prompt_length})"
    else:
        setting = f"training.max_tokens_per_batch (now {p.max_tokens_per_batch})"
    also = "" if p.gradient_checkpointing or phase != "update" else ", or set training.gradient_checkpointing=true"
    return f"lower {setting}{also}"


def check_fits(config, model_dir: str | Path, processes: int = 1) -> None:
    """Refuse, before the model loads, a run whose estimated peak exceeds the memory available to it
    (each process on this machine takes its own). On a GPU the activations are the GPU's: no check."""
    if on_cuda():
        return
    shape = model_shape(model_dir)
    if shape is None:
        return
    phases = estimate(config, shape, processes)
    refuse("PPO", phases.peak, available_bytes(), advice(config, phases.phase), phases.phase.replace("_", "-"))
