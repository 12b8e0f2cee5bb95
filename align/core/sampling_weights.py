"""Sampling on a working copy of a model's linear weights: every active LoRA adapter merged in, and on the CPU laid
out once for the few-row products of decoding (issue #24).

A decoding step multiplies a handful of rows (one per sequence) by every weight of the model, so it is bound by
reading the weights. With a LoRA adapter each linear layer also runs the adapter's two small products and their
adds, unmerged, one dispatch after another. And on the CPU, MKL's fp32 GEMM reads the weight slowly when the rows
are few (our reading: it packs the weight matrix again on every call): with SmolLM2's shapes, 8 rows and one
thread, `F.linear` read the up projection's weight from memory at 5.6 GB/s against 9.1 GB/s for the same product on
a weight packed once by oneDNN, and the 49152-row output layer took 28.7 ms against 11.0 (bench/README.md,
section 4).

Inside `sampling_weights(model, rows)` each plain linear layer, and each LoRA layer over one, runs on its copy:
W + Σ_a s_a B_a A_a over the layer's active adapters (none when adapters are disabled), packed by oneDNN for `rows`
rows on the CPU in fp32 (from PACKED_FROM_ROWS rows), else a plain merged tensor for LoRA layers only. The model's
own weights and adapters are untouched (no merge and unmerge, whose rounding would creep into the base that is also
PPO's reference), and the copy is freed on exit. It is built on entry from the adapters as they are then: enter it
after an update, never across one. Layers it cannot copy keep their own forward: quantised bases (a 4-bit layer's
copy would be the full-precision weight the quantisation saves), DoRA and other LoRA variants, LoRA biases,
transposed (Conv1D) weights, and dropout that is live in training mode.

    sampling_weights   context manager: the model's linear layers on their working copies
    copy_bytes         the copy's size for a model shape: the memory estimates' term
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from align.core.fused_lora import is_fused, live_dropout, plain_adapters
from align.core.memory import FP32, Shape


PACKED_FROM_ROWS = 4
"""Fewer rows keep the stored layout (LoRA layers still merged): at 1 row MKL's matrix-vector product reads the
weight faster than the packed product (0.27 against 0.32 ms for SmolLM2's up projection), and at batch 2 a
rollout on the packed copy took longer than through the adapters (2.27 against 2.09 s), at batch 4 less (2.52
against 3.06 s; SmolLM2, 24 tokens, bench/results/generation.json of 2026-12-06 12:30)."""


def packs(device: torch.device, dtype: torch.dtype, rows: int) -> bool:
    """Whether oneDNN's packed layout serves: fp32 on the CPU, at least PACKED_FROM_ROWS rows."""
    return (device.type == "cpu" and dtype == torch.float32 and rows >= PACKED_FROM_ROWS
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


@contextlib.contextmanager
def sampling_weights(model: nn.Module, rows: int, enabled: bool = True) -> Iterator[int]:
    """Run `model`'s linear layers on their working copies until exit; yields how many layers got one.
    `rows`: the rows a decoding step multiplies (batch x sequences per prompt); `enabled` false: none does
    (the settings' `working_copy`, as torch.autocast's `enabled`)."""
    if not enabled:
        yield 0
        return
    patched: list[tuple[nn.Module, Callable | None]] = []  # each layer with the instance forward it had
    scratch: dict[tuple, torch.Tensor] = {}  # a merged weight before packing, one buffer per shape
    try:
        with torch.no_grad():
            for module in _layers(model):
                replaced = vars(module).get("forward")
                if replaced is not None and not is_fused(replaced):
                    continue  # an enclosing copy's, accelerate's device hooks: left as it is
                forward = _copy_forward(module, rows, scratch)
                if forward is not None:
                    module.forward = forward  # the instance's attribute: nn.Module.__call__ runs it
                    patched.append((module, replaced))
        scratch.clear()
        yield len(patched)
    finally:
        for module, replaced in patched:  # the forward it had again; the copy goes with the closure
            if replaced is None:
                vars(module).pop("forward", None)
            else:
                module.forward = replaced


def _layers(model: nn.Module) -> Iterator[nn.Module]:
    """LoRA layers, and plain linear layers that are not part of one (its base, its A and B)."""
    lora_layer = _lora_layer_class()
    inside = set()
    for module in model.modules():
        if lora_layer is not None and isinstance(module, lora_layer):
            inside.update(id(m) for m in module.modules() if m is not module)
    for module in model.modules():
        if (lora_layer is not None and isinstance(module, lora_layer)) or (
                type(module) is nn.Linear and id(module) not in inside):
            yield module


def _lora_layer_class() -> type | None:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return None
    return LoraLayer


def _copy_forward(module: nn.Module, rows: int,
                  scratch: dict[tuple, torch.Tensor]) -> Callable[..., torch.Tensor] | None:
    """The forward on the layer's working copy, or None where the layer keeps its own."""
    if type(module) is nn.Linear:
        weight, bias, adapters = module.weight, module.bias, []
    else:
        base = module.get_base_layer()
        adapters = plain_adapters(module)
        if type(base) is not nn.Linear or adapters is None or any(live_dropout(module, a) for a in adapters):
            return None  # a merged weight cannot drop the adapter's input
        weight, bias = base.weight, base.bias
    pack = packs(weight.device, weight.dtype, rows)
    if not adapters and not pack:
        return None  # a plain layer gains nothing from a copy of itself
    if adapters:
        # into a reused buffer when it is packed next: a fresh one a layer would be page-faulted in every time
        key = (weight.shape, weight.dtype, weight.device)
        if pack and key not in scratch:
            scratch[key] = torch.empty_like(weight)
        merged = scratch[key] if pack else torch.empty_like(weight)
        merged.copy_(weight)
        for a in adapters:  # peft's get_delta_weight, s B A, without its (out x in) temporary
            merged.addmm_(module.lora_B[a].weight.to(weight.dtype), module.lora_A[a].weight.to(weight.dtype),
                          alpha=module.scaling[a])
        weight = merged
    own = module.forward  # for calls the copy does not serve: keyword arguments (peft's adapter_names), other dtypes
    if pack:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)

        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if args or kwargs or x.dtype != torch.float32:
                return own(x, *args, **kwargs)
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

        return forward

    def plain(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs:
            return own(x, *args, **kwargs)
        return F.linear(x.to(weight.dtype), weight, bias)

    return plain


def copy_bytes(shape: Shape, quantised: bool) -> int:
    """Bytes of the working copy on the CPU (fp32, several rows): the output layer, and unless quantised
    (those layers keep their own forward) every block's projections, i.e. every weight but the input
    embedding and the norms."""
    head = shape.vocab * shape.hidden
    if quantised:
        return head * FP32
    return (shape.weights - (0 if shape.tied else head)) * FP32
