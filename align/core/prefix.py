"""Prompt prefixes computed once. Every chat prompt starts with the same tokens (the template's system
turn: 25 of SmolLM2's 40 prompt tokens), every MMLU question with the same header, and every sample
of a prompt with the whole prompt. A forward pass over those tokens per row is repeated work: here
the shared prefix runs once (batch 1), its KV cache is copied to every row, and only each row's own
tokens run after it. Rows become [shared prefix][left padding][own tokens]; the attention mask hides
the padding and positions count real tokens only, so every row sees exactly its own sequence.

B rows, P shared tokens, L = P + the longest own part.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any

import torch


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, L), mask (B, L)), padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids, mask


def right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, T), mask (B, T)), padded on the right."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return ids, mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only: padding must not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def cache_name(model: Any) -> str:
    """transformers renamed `past_key_values` to `cache` (5.2x): use whichever this version takes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def cache_of(output: Any, name: str) -> Any:
    return output[name] if name in output else output.past_key_values


def common_prefix(rows: list[list[int]], keep: int = 1) -> int:
    """How many leading tokens all rows share, leaving every row at least `keep` tokens of its own."""
    limit = min(len(r) for r in rows) - keep
    first, n = rows[0], 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return max(n, 0)


def is_prompt_learning(model: Any) -> bool:
    """Soft prompts are prepended inside peft's forward: a cached prefix would miss them."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


@dataclass
class Prefilled:
    """Rows as the model sees them, and the KV cache of all but each row's last `keep` tokens."""

    ids: torch.Tensor  # (B, L) [shared prefix][left padding][own tokens]
    mask: torch.Tensor  # (B, L)
    cache: Any  # covers ids[:, :L - keep]; None when there is nothing to cache
    keep: int

    def expanded(self, n: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """(ids, mask, a fresh copy of the cache), each row repeated n times in place."""
        cache = copy.deepcopy(self.cache) if self.cache is not None else None
        if cache is not None and n > 1:
            cache.batch_repeat_interleave(n)
        return self.ids.repeat_interleave(n, 0), self.mask.repeat_interleave(n, 0), cache


@torch.inference_mode()
def prefill(model: Any, rows: list[list[int]], pad_id: int, keep: int = 1) -> Prefilled:
    """Run every row but its last `keep` tokens through `model`, the shared prefix once."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    shared = common_prefix(rows, keep)
    own_ids, own_mask = left_pad([r[shared:] for r in rows], pad_id)
    B = len(rows)
    ids = torch.cat([torch.tensor(rows[0][:shared], dtype=torch.long).expand(B, shared), own_ids], 1).to(device)
    mask = torch.cat([torch.ones(B, shared, dtype=torch.long), own_mask], 1).to(device)
    L = ids.shape[1]
    if L - keep <= 0 or is_prompt_learning(model):
        return Prefilled(ids, mask, None, keep)
    name = cache_name(model)
    cache = DynamicCache()
    if shared:
        prefix = ids[:1, :shared]  # (1, P)
        cache = cache_of(model(input_ids=prefix, use_cache=True, logits_to_keep=1, **{name: cache}), name)
        cache.batch_repeat_interleave(B)
    if L - keep > shared:
        upto = mask[:, :L - keep]
        out = model(input_ids=ids[:, shared:L - keep], attention_mask=upto, position_ids=position_ids(upto)[:, shared:],
                     use_cache=True, logits_to_keep=1, **{name: cache})
        cache = cache_of(out, name)
    return Prefilled(ids, mask, cache, keep)
