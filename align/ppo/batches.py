"""The prompts of an update: which ones (epochs of a seeded shuffle), each process's share, as token ids."""

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
