"""Micro-batches by a token budget: a padded batch costs (members x its longest member) tokens of
activations, so sequences are sorted by length and cut where the padded size would pass the budget.
One 900-token conversation then pads only the few long ones beside it, not a whole batch of short ones.

    token_batches       indices in micro-batches of like length, each within max_tokens padded tokens (an
                        index may stand for several rows: a group of completions)
    activation_bytes    the activations one padded token keeps for backward, from a model's shape
"""

from __future__ import annotations


def token_batches(lengths: list[int], max_tokens: int, max_items: int | None = None,
                  sizes: list[int] | None = None) -> list[list[int]]:
    """Indices 0..N-1, longest first, in micro-batches whose padded size rows x longest stays <= max_tokens
    (and len(batch) <= max_items when given). Item i is sizes[i] rows of lengths[i] tokens (default 1: a
    group of K completions padded to its longest is K rows). An item over the budget goes alone.

    Equivalent to: walk the indices sorted by length, descending; start a new batch when adding the next
    one would make (rows + its rows) x (the batch's first, longest, length) exceed max_tokens."""
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
    sizes = sizes or [1] * len(lengths)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep their order
    batches: list[list[int]] = []
    rows = 0
    for i in order:
        current = batches[-1] if batches else None
        if (current is None or (rows + sizes[i]) * lengths[current[0]] > max_tokens
                or (max_items is not None and len(current) >= max_items)):
            batches.append([i])
            rows = sizes[i]
        else:
            current.append(i)
            rows += sizes[i]
    return batches


def activation_bytes(hidden: int, intermediate: int, layers: int, *, recompute: bool, bytes_per_value: int = 4) -> int:
    """Bytes of activations one padded token holds at the peak of a training forward + backward of a
    LoRA-tuned decoder (Llama-like: attention + gated MLP).

    Per layer and token, autograd keeps ~24 hidden-sized values (norms, q/k/v/o inputs, LoRA dropout
    copies, attention output) and ~8 intermediate-sized ones (gate, up, silu, their product, dropout):
    on SmolLM2-135M (576, 1536, 30 layers, fp32) that is 3.1 MB a token; measured 2.1 MB kept by
    autograd (saved_tensors_hooks) and 2.8-3.5 MB resident per token (2026-12-05). Recomputed activations
    keep each layer's input (a hidden-sized value, twice for the residual) and one layer's whole set."""
    per_layer = 24 * hidden + 8 * intermediate
    values = 2 * hidden * layers + per_layer if recompute else per_layer * layers
    return values * bytes_per_value
