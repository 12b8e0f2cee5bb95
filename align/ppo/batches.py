"""The prompts of an update: which ones (epochs of a seeded shuffle), each process's share, as token ids;
and the rollout's rows cut into micro-batches by a token budget, each run at its own width.

    batch_of_update    the global batch of an update
    shard              this process's contiguous share of a global list
    encode_prompts     prompts as left-padded token ids
    micro_batches      rows of like length in micro-batches of at most max_tokens padded tokens
    unpadded_columns   the columns a micro-batch's rows need of the rollout's padded tensors
"""

from __future__ import annotations

import random
from typing import Any

import torch

from align.core.distributed import World


def batch_of_update(prompts: list, update: int, batch_size: int, seed: int) -> list:
    """The global batch of update `update`: epochs of a seeded shuffle, so a resumed run sees the same ones."""
    per_epoch = len(prompts) // batch_size
    epoch, index = divmod(update, per_epoch)
    order = random.Random(seed + epoch).sample(prompts, len(prompts))
    return order[index * batch_size:(index + 1) * batch_size]


def shard(items: list, world: World) -> list:
    """This process's contiguous share of a global list, in the order gather joins them."""
    size = -(-len(items) // world.size)
    return items[world.rank * size:(world.rank + 1) * size]


def encode_prompts(tokenizer: Any, prompts: list, max_length: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask (B, Q), left-padded, of the prompts as the chat template puts them
    (or the last message's text without one); a prompt over max_length loses its start."""
    texts = [tokenizer.apply_chat_template(list(r.messages), tokenize=False, add_generation_prompt=True)
             if tokenizer.chat_template else r.messages[-1]["content"] for r in prompts]
    tokenizer.truncation_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                    add_special_tokens=False)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def unpadded_columns(query_lengths: torch.Tensor, response_lengths: torch.Tensor, rows: torch.Tensor,
                     Q: int) -> tuple[slice, slice]:
    """The columns that rows need of input_ids (B, Q + T) and of the response tensors (B, T): from the
    first token of their longest prompt to the last of their longest response. The rest is padding
    that every one of those rows has, and dropping it leaves their figures as they were: each row
    masks its own left padding, and causal attention never reads to the right. The lengths are on
    the CPU, so cutting costs no device sync.

    At least one prompt column stays: the first response token is predicted from the last prompt
    column, a pad where every prompt is empty (a template-less prompt of "")."""
    q, t = max(int(query_lengths[rows].max()), 1), int(response_lengths[rows].max())
    return slice(max(Q - q, 0), Q + t), slice(0, t)


def micro_batches(rows: torch.Tensor, lengths: tuple[torch.Tensor, torch.Tensor], max_rows: int | None,
                  max_tokens: int) -> list[torch.Tensor]:
    """rows (1-dim indices into the rollout) cut into micro-batches of like length, longest first, each
    within `max_tokens` padded tokens: len(batch) x (its longest prompt + its longest response), the
    width unpadded_columns gives it; and at most `max_rows` rows when given. A row longer than the
    budget goes alone. lengths (prompt, response) are on the CPU.

    Equivalent to: walk the rows sorted by prompt + response length, descending; start a new
    micro-batch when adding the next row would take the padded size past max_tokens (a long prompt
    beside a long response costs both: prompts are left-padded, responses right-padded) or the rows
    past max_rows. How the rows are cut changes memory, never the mini-batch's gradient (its loss is
    a token mean over the whole mini-batch). As core.token_batches, but counting the two paddings."""
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
    query_lengths, response_lengths = lengths
    order = rows[torch.argsort(-(query_lengths + response_lengths)[rows], stable=True)].tolist()
    batches: list[list[int]] = []
    q = t = 0  # the current micro-batch's longest prompt (at least 1 column, as unpadded_columns) and response
    for i in order:
        qi, ti = max(int(query_lengths[i]), 1), int(response_lengths[i])
        current = batches[-1] if batches else None
        if (current is None or (len(current) + 1) * (max(q, qi) + max(t, ti)) > max_tokens
                or (max_rows is not None and len(current) >= max_rows)):
            batches.append([i])
            q, t = qi, ti
        else:
            current.append(i)
            q, t = max(q, qi), max(t, ti)
    return [torch.tensor(b, dtype=rows.dtype) for b in batches]

