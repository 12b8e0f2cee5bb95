"""Reward-model scores of evaluation's texts with their shared prefix run once (core/prefix.py)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from align.core.prefix import cache_name, cache_of, common_prefix, is_prompt_learning, position_ids, right_pad
from align.reward.score import length_batches, score_texts


@torch.inference_mode()
def reward_scores(reward_model: Any, texts: list[str], batch_size: int = 16) -> torch.Tensor:
    """Raw rewards (N,) of chat-formatted texts, as reward.score.score_texts computes them, with the
    texts' shared prefix (the chat template's system turn) run once. Texts that score_texts would
    truncate, or a soft-prompt reward model, go to score_texts itself."""
    from transformers import DynamicCache

    tokenizer, model = reward_model.tokenizer, reward_model.model
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if not rows or max(len(r) for r in rows) > reward_model.max_length or is_prompt_learning(model):
        # the active model's raw rewards: an ensemble's own score_texts would combine its members in here
        return score_texts(model, tokenizer, texts, reward_model.max_length, batch_size)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    name = cache_name(model)
    shared = common_prefix(rows)
    prefix_cache = None
    if shared:
        prefix = torch.tensor([rows[0][:shared]], device=device)
        prefix_cache = cache_of(model(input_ids=prefix, use_cache=True, **{name: DynamicCache()}), name)
    out = torch.zeros(len(rows))
    for batch_indices in length_batches([len(r) for r in rows], batch_size):
        own_ids, own_mask = (t.to(device) for t in right_pad([rows[i][shared:] for i in batch_indices],
                                                             tokenizer.pad_token_id))  # (B, T)
        B = own_ids.shape[0]
        full = torch.cat([torch.ones(B, shared, dtype=torch.long, device=device), own_mask], 1)  # (B, P + T)
        kwargs = {}
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(B)
            kwargs[name] = cache
        # the classifier reads the last token that is not padding, found in own_ids (right-padded)
        logits = model(input_ids=own_ids, attention_mask=full, position_ids=position_ids(full)[:, shared:], **kwargs).logits
        out[batch_indices] = logits[:, 0].float().cpu()
    model.train(was_training)
    return out
