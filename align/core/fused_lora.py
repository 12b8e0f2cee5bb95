"""LoRA layers computed as one autograd node each: y = x Wᵀ + b + s (x Aᵀ) Bᵀ, forward and back (issue #24).

peft's LoRA layer runs the base product, then the adapter's two products, a scaling and an add, each its own
operator and autograd node, and the backward pass mirrors them: a scaling of the (tokens x out) gradient and an
add of a second (tokens x in) input gradient. On the CPU those elementwise passes over activations cost about as
much as the adapter's products (SmolLM2's shapes, 4 x 38 tokens, one thread: 16.8 against 15.2 ms a block forward
and back). Here the adapter's product accumulates into the base product's output (addmm_ with the scale on the
rank-r intermediate), and the backward pass accumulates the adapter's input gradient into the base's the same
way, so no (tokens x features) tensor is scaled or added. Outputs and gradients are peft's own products, in the
same order.

On a CPU with AMX the backward pass can take the input gradient through the frozen base weight in bf16
(`fuse_lora(model, "bf16")`, or "auto"): the product AMX runs at ~6x the fp32 rate (SmolLM2's up projection, 308
rows: 0.49 against 3.1 ms; with both casts 1.0 ms), its output ~0.3% off fp32's, the precision of any backward
pass through a bf16 base (QLoRA on a GPU computes in bf16). The forward pass, and with it every log-prob, ratio
and loss, stays in the input's dtype, and so do the adapter's own gradients (computed from the incoming gradient
as it is). Products too small for the casts to pay (BF16_FROM_ROWS, BF16_FROM_MACS) stay in fp32.

`fuse_lora(model)` gives every LoRA layer over an nn.Linear or a bitsandbytes 4-bit layer this forward for the
model's life (a 4-bit base's product is its own inference kernel, and its backward pass dequantises the weight
as bitsandbytes' does: SmolLM2 NF4, policy and value forward and back on 4 x 77 tokens, 3.00 s through peft,
2.82 fused, 2.44 with bf16 input gradients; fp32 base 2.69, 2.60, 2.23; bench/fused_lora.py). It reads the
layer's state on every call, as peft's forward does, so switching adapters, disabling them (the reference) and
sampling on a working copy (core.sampling_weights) keep working. Calls it does not serve go to peft's forward:
several active adapters, DoRA and other variants, LoRA biases, merged adapters, keyword arguments (peft's
`adapter_names`), mixed dtypes, autocast, bases that train their own bias, weights ZeRO-3 partitions. Live
dropout (training mode) is drawn from torch's generator at 1/32768 steps of p, 2.3x faster than torch's
dropout (keep_mask); its 1 / (1 - p) scales the rank-r products, not the input.

    fuse_lora        install the fused forward on a model's LoRA layers
    lora_linear      the fused product (an autograd function's apply)
    plain_adapters   a LoRA layer's active adapters whose output is s B A drop(x), or None
    live_dropout     the dropout an adapter's input gets now
    is_fused         whether a layer's instance forward is fuse_lora's
    keep_mask        a dropout mask and the share it keeps
    backward_dtype   a `backward_precision` setting as the dtype of the input gradients' products
"""

from __future__ import annotations

import math
import sys
import types
from typing import Any

import torch
from torch import nn


BF16_FROM_ROWS = 64
BF16_FROM_MACS = 2**24
"""The smallest input gradient computed in bf16: rows, and rows x in x out multiply-adds. One thread of this
project's CPU (AMX), fp32 against bf16 with both casts: (256 x 256) 64 rows 45 against 47 us, 256 rows 190
against 81; (1536 x 576) 16 rows 202 against 385, 64 rows 596 against 488; (64 x 64) 1024 rows 48 against 50."""


def backward_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """`auto`: bf16 on a CPU with AMX tiles (where its products are several times faster), else none (the
    input's own dtype); `bf16` and `fp32` as said."""
    if precision == "bf16":
        return torch.bfloat16
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return torch.bfloat16 if precision == "auto" and device.type == "cpu" and amx() else None


class _LoraLinear(torch.autograd.Function):
    """x Wᵀ + b + s (drop(x) Aᵀ) Bᵀ with W and b frozen: gradients for x, A and B only."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, base: nn.Module, lora_a: torch.Tensor, lora_b: torch.Tensor,
                scale: float, backward: torch.dtype | None, dropout: float) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        keep, kept_share = None, 1.0
        dropped = rows
        if dropout > 0:  # inverted dropout on the adapter's input: its 1 / (1 - p) goes on the rank-r products
            keep, kept_share = keep_mask(rows.shape, dropout, rows.device)
            dropped = rows * keep
        # (tokens, r), scaled here rather than the (tokens, out) sum
        hidden = (dropped @ lora_a.t()).mul_(scale / kept_share)
        # the output a tensor of its own, not a view made in here (F.linear's N-d result is one): callers may add
        # into it in place, as into peft's
        out = torch.empty((*x.shape[:-1], base.out_features), dtype=x.dtype, device=x.device)
        flat = out.view(-1, base.out_features)
        if type(base) is nn.Linear and base.bias is None:
            torch.mm(rows, base.weight.t(), out=flat)
        elif type(base) is nn.Linear:
            torch.addmm(base.bias, rows, base.weight.t(), out=flat)
        else:
            flat.copy_(base(rows))  # autograd is off in here: a 4-bit layer runs its inference kernel
        flat.addmm_(hidden, lora_b.t())
        # an nn.Linear's weight is saved, so a weight changed in place before backward fails as autograd's own check
        ctx.save_for_backward(dropped, hidden, lora_a, lora_b, keep, base.weight if type(base) is nn.Linear else None)
        ctx.base, ctx.scale, ctx.in_shape, ctx.backward, ctx.kept_share = base, scale, x.shape, backward, kept_share
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
        dropped, hidden, lora_a, lora_b, keep, weight = ctx.saved_tensors
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])
        grad_hidden = (grad_rows @ lora_b).mul_(ctx.scale)  # (tokens, r): the gradient at drop(x) Aᵀ
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad(grad_rows, ctx.base, weight, ctx.backward)
            if keep is None:
                grad_x.addmm_(grad_hidden, lora_a)
            else:
                grad_x.add_((grad_hidden @ lora_a).mul_(keep), alpha=1 / ctx.kept_share)
            grad_x = grad_x.view(ctx.in_shape)
        if ctx.needs_input_grad[2]:
            grad_a = (grad_hidden / ctx.kept_share).t() @ dropped
        if ctx.needs_input_grad[3]:
            grad_b = grad_rows.t() @ hidden
        return grad_x, None, grad_a, grad_b, None, None, None


DROPOUT_LEVELS = 2**15


def keep_mask(shape: tuple[int, ...], p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A dropout mask (True: kept) and the share it keeps, 1 - p to 1/32768: each element compares 15 random
    bits with p, two elements from each 32-bit draw of torch's generator (its seed decides the masks).
    torch's own bernoulli_ makes a draw and a double-precision compare per element: 4.0 against 1.7 ms for
    1024 x 576 on one thread of this project's CPU, 840 masks a SmolLM2 reward step."""
    drop_below = round(p * DROPOUT_LEVELS)
    if not 0 <= drop_below < DROPOUT_LEVELS:
        raise ValueError(f"dropout {p}: keep_mask needs 0 <= p < 1 - 1/{2 * DROPOUT_LEVELS}")
    n = math.prod(shape)
    # random_() without bounds: [0, 2**31 - 1] for int32 (torch's documented default), 31 random bits each; with
    # the bounds spelled out torch takes a modulo path, 2.6 against 1.6-1.8 ms for 1024 x 576 / 2
    bits = torch.empty((n + 1) // 2, dtype=torch.int32, device=device).random_()
    keep = torch.empty(((n + 1) // 2, 2), dtype=torch.bool, device=device)
    torch.ge(bits & (DROPOUT_LEVELS - 1), drop_below, out=keep[:, 0])
    torch.ge(bits >> 16, drop_below, out=keep[:, 1])
    return keep.view(-1)[:n].view(shape), 1 - drop_below / DROPOUT_LEVELS


def _input_grad(grad_rows: torch.Tensor, base: nn.Module, weight: torch.Tensor | None,
                dtype: torch.dtype | None) -> torch.Tensor:
    """grad_rows @ W, in `dtype` where the product is large enough for the casts to pay; W the saved weight of
    an nn.Linear, or the 4-bit layer's dequantised (as bitsandbytes' own backward does)."""
    rows, (out, inp) = grad_rows.shape[0], (base.out_features, base.in_features)
    if dtype is None or dtype == grad_rows.dtype or rows < BF16_FROM_ROWS or rows * out * inp < BF16_FROM_MACS:
        dtype = grad_rows.dtype
    if weight is None:
        import bitsandbytes.functional as bnb_functional

        weight = bnb_functional.dequantize_4bit(base.weight.data, base.weight.quant_state)
    return (grad_rows.to(dtype) @ weight.to(dtype)).to(grad_rows.dtype)


def lora_linear(x: torch.Tensor, base: nn.Module, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float,
                backward: torch.dtype | None = None, dropout: float = 0.0) -> torch.Tensor:
    """base(x) + scale * F.linear(F.linear(F.dropout(x, dropout), lora_a), lora_b) as one autograd node, `base`
    an nn.Linear or a bitsandbytes 4-bit layer, frozen (no gradient for its weight or bias). `backward`: the
    dtype of the input gradient's product through the base weight (None: x's own)."""
    return _LoraLinear.apply(x, base, lora_a, lora_b, scale, backward, dropout)


def plain_adapters(layer: Any) -> list[str] | None:
    """The LoRA layer's active adapters, each giving s B A drop(x) (empty: the base alone), or None where its
    output is something else (merged or transposed weights, DoRA and other variants, LoRA biases)."""
    if getattr(layer, "fan_in_fan_out", False) or layer.merged:  # merged: peft unmerges when disabled, runs
        return None  # the rest unmerged; its own forward knows which
    if layer.disable_adapters:  # the base alone
        return []
    adapters = [a for a in layer.active_adapters if a in layer.lora_A]
    for a in adapters:
        if (getattr(layer, "use_dora", {}).get(a) or getattr(layer, "lora_bias", {}).get(a)
                or getattr(layer, "lora_variant", {}).get(a) is not None):
            return None
    return adapters


def live_dropout(layer: Any, adapter: str) -> float:
    """The dropout probability the adapter's input gets now: 0 unless its nn.Dropout is in training mode."""
    dropout = layer.lora_dropout[adapter]
    return dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0


def fuse_lora(model: nn.Module, backward_precision: str = "fp32") -> int:
    """Give each LoRA layer over an nn.Linear or a 4-bit layer the fused forward (a method bound to the layer
    as its instance attribute, for the model's life: a deep copy's is bound to the copy); returns how many got
    it. Layers whose forward is already replaced are left as they are. `backward_precision`: the stages'
    setting of that name, for the input gradients' products through the base weights on the model's device
    (backward_dtype)."""
    from peft.tuners.lora import LoraLayer

    backward = backward_dtype(backward_precision, next(model.parameters()).device)
    fused = 0
    for module in model.modules():
        if (isinstance(module, LoraLayer) and "forward" not in vars(module)
                and _fusable_base(module.get_base_layer())):
            module.fused_backward = backward
            module.forward = types.MethodType(_fused_forward, module)
            fused += 1
    return fused


def is_fused(forward: Any) -> bool:
    """Whether a layer's instance `forward` is fuse_lora's (core.sampling_weights replaces it while sampling,
    then puts it back)."""
    return getattr(forward, "__func__", None) is _fused_forward


def _fusable_base(module: nn.Module) -> bool:
    """An nn.Linear or a bitsandbytes 4-bit layer whose call is its product alone (no hooks, e.g. accelerate's,
    which the fused forward would skip; no 4-bit repacking for CPU inference, whose layout the backward pass's
    dequantisation would not read)."""
    if "forward" in vars(module) or module._forward_hooks or module._forward_pre_hooks:
        return False
    return type(module) is nn.Linear or (_is_4bit(module) and not getattr(module, "support_avx512bf16_for_cpu", False))


def _is_4bit(module: nn.Module) -> bool:
    bnb = sys.modules.get("bitsandbytes")  # a model with 4-bit layers has imported it
    return bnb is not None and isinstance(module, bnb.nn.Linear4bit)


def _serves(base: nn.Module, dtype: torch.dtype) -> bool:
    """Whether the fused product gives the base's part of the output and all its gradients: the base computes
    in `dtype` as it is (a 4-bit layer: its compute dtype), trains nothing of its own (peft's `bias="all"`
    would), and its weight is there for the backward pass (not one DeepSpeed ZeRO-3 gathers only around the
    layer's call)."""
    weight, bias = base.weight, base.bias
    if hasattr(weight, "ds_id") or weight.requires_grad or (bias is not None and bias.requires_grad):
        return False
    return (weight.dtype if type(base) is nn.Linear else base.compute_dtype) == dtype


def _fused_forward(layer: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The layer's forward (bound to it by fuse_lora): one fused product where it serves, else peft's own."""
    adapters = None if args or kwargs or torch.is_autocast_enabled(x.device.type) else plain_adapters(layer)
    if adapters is not None and len(adapters) <= 1:
        base = layer.get_base_layer()
        if not adapters:
            return base(x)
        a, b = layer.lora_A[adapters[0]].weight, layer.lora_B[adapters[0]].weight
        dropout = live_dropout(layer, adapters[0])
        # other dtypes: peft casts between the base's and the adapter's
        # a dropout that keeps nothing at keep_mask's steps: peft's (zeros)
        if x.dtype == a.dtype == b.dtype and round(dropout * DROPOUT_LEVELS) < DROPOUT_LEVELS and _serves(base, x.dtype):
            return lora_linear(x, base, a, b, layer.scaling[adapters[0]], layer.fused_backward, dropout)
    return type(layer).forward(layer, x, *args, **kwargs)
