"""The reward model's batches under a token budget, and the exact gradient of the K-wise loss over them.

    Batcher       groups -> the padded micro-batches of their completions (whole groups where one fits the
                  budget), the pairs of the loss and their groups
    backward      gradients of the whole batch's loss, micro-batch by micro-batch; the batch's rewards and loss
    batch_loss    the K-wise loss of a batch's rewards (align's InstructGPT loss, reward.losses)
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from align.core.token_batches import token_batches
from align.reward.formats import Group
from align.reward.losses import kwise_ranking_loss
from align.reward.score import conversation_text, pad, token_lengths


class Batcher:
    """Groups -> the token ids of all their completions, cut into micro-batches of at most `max_tokens`
    padded tokens, plus the pair indices of the loss.

    A micro-batch holds whole groups where one fits the budget (K completions padded to the group's
    longest): the loss then separates by micro-batch and each backs up its own share. Only a group over
    the budget is split, completion by completion, and pays the gradient cache's extra forward."""

    def __init__(self, tokenizer: Any, max_length: int, use_margin: bool, max_tokens: int = 2048):
        self.tokenizer, self.max_length, self.use_margin, self.max_tokens = tokenizer, max_length, use_margin, max_tokens

    def __call__(self, groups: list[Group]) -> dict[str, Any]:
        import torch

        texts, pairs, pair_group, margins, members = [], [], [], [], []
        for g, group in enumerate(groups):
            offset = len(texts)
            texts += [conversation_text(self.tokenizer, group.prompt, c) for c in group.completions]
            members.append(list(range(offset, len(texts))))
            for w, l in group.pairs:
                pairs.append((offset + w, offset + l))
                pair_group.append(g)
                margins.append(group.margin or 0.0)
        ids = token_lengths(self.tokenizer, texts, self.max_length)
        micro, whole = self.cut([len(i) for i in ids], members)
        return {
            "inputs": [pad(self.tokenizer, [ids[i] for i in m]) for m in micro],  # one padded batch per micro-batch
            "micro": micro,  # indices of each micro-batch's completions in the flat list
            "whole": whole,  # whether a micro-batch holds whole groups (else part of one group over the budget)
            "pairs": torch.tensor(pairs, dtype=torch.long),  # (P, 2)
            "pair_group": torch.tensor(pair_group, dtype=torch.long),  # (P,)
            "margins": torch.tensor(margins) if self.use_margin else None,  # (P,)
        }

    def cut(self, lengths: list[int], members: list[list[int]]) -> tuple[list[list[int]], list[bool]]:
        """Micro-batches of completion indices, and for each whether it holds whole groups."""
        longest = [max(lengths[i] for i in m) for m in members]
        units = token_batches(longest, self.max_tokens, sizes=[len(m) for m in members])
        if len(units) == 1:
            return [[i for m in members for i in m]], [True]  # all in one forward: in the batch's own order
        micro, whole = [], []
        for unit in units:
            if len(unit) == 1 and len(members[unit[0]]) * longest[unit[0]] > self.max_tokens:
                group = members[unit[0]]
                parts = token_batches([lengths[i] for i in group], self.max_tokens)
                micro += [[group[p] for p in part] for part in parts]
                whole += [len(parts) == 1] * len(parts)
            else:
                micro.append([i for g in unit for i in members[g]])
                whole.append(True)
        return micro, whole


def batch_loss(rewards: Any, batch: dict[str, Any]) -> Any:
    device = rewards.device
    return kwise_ranking_loss(rewards, batch["pairs"].to(device), batch["pair_group"].to(device),
                              None if batch["margins"] is None else batch["margins"].to(device))


def backward(accelerator: Any, model: Any, batch: dict[str, Any], weight: float) -> tuple[Any, Any]:
    """Gradients of weight x the K-wise loss of the whole batch, micro-batch by micro-batch; returns the
    batch's rewards (N,) and its loss.

    The loss is a mean over groups, so a micro-batch of whole groups G_j backs up its own groups' loss
    weighted |G_j| / G. A group over the token budget is split across micro-batches, and its loss couples
    them: its rewards come first from a forward without a graph, then dL/dr, then each of its micro-batches
    runs again with its graph and backs up sum_i dL/dr_i * r_i, which accumulates sum_i dL/dr_i * dr_i/dθ
    = dL/dθ exactly (the gradient cache of Gao et al. 2021, arXiv 2101.06983); its cost is one extra
    forward without a graph, for those groups only. Each such micro-batch's dropout masks are replayed
    (fork_rng) so both passes compute the same r. Only the last backward syncs DDP's gradients: the
    processes' micro-batch counts may differ."""
    import torch

    device = accelerator.device
    micro, whole = batch["micro"], batch["whole"]
    n = sum(len(m) for m in micro)
    rewards = torch.zeros(n, device=device)
    n_groups = int(batch["pair_group"].max()) + 1
    split = [j for j, w in enumerate(whole) if not w]
    last = len(micro) - 1  # the index of the last backward: whole micro-batches first, then split ones

    def synced(k: int):
        return contextlib.nullcontext() if k == last else accelerator.no_sync(model)

    for k, j in enumerate(j for j, w in enumerate(whole) if w):
        indices = torch.tensor(micro[j], device=device)
        with synced(k):
            mine = model(**batch["inputs"][j].to(device)).logits[:, 0].float()  # (n_j,)
            share, groups = _share_loss(rewards.index_put((indices,), mine), batch, indices)
            accelerator.backward(share * (groups / n_groups) * weight)
        rewards[indices] = mine.detach()
    if split:
        bare = accelerator.unwrap_model(model)  # DDP's forward would sync buffers in a pass that has no backward
        rng_states = []
        for j in split:
            rng_states.append(_rng_state())
            with torch.no_grad():
                rewards[micro[j]] = bare(**batch["inputs"][j].to(device)).logits[:, 0].float()
        indices = torch.tensor([i for j in split for i in micro[j]], device=device)
        cached = rewards.detach().clone().requires_grad_(True)
        share, groups = _share_loss(cached, batch, indices)
        (share * (groups / n_groups) * weight).backward()
        dloss_dr = cached.grad  # (N,), non-zero on the split groups' completions only
        for k, (j, rng) in enumerate(zip(split, rng_states), start=len(micro) - len(split)):
            with _replayed_rng(rng), synced(k):
                again = model(**batch["inputs"][j].to(device)).logits[:, 0].float()  # (n_j,)
                accelerator.backward((again * dloss_dr[micro[j]]).sum())
    return rewards.detach(), batch_loss(rewards.detach(), batch).detach()


def _share_loss(rewards: Any, batch: dict[str, Any], indices: Any) -> tuple[Any, int]:
    """The K-wise loss of the groups whose completions are at `indices` (a mean over those groups), and
    how many groups that is."""
    import torch

    pairs, pair_group = batch["pairs"].to(rewards.device), batch["pair_group"].to(rewards.device)
    held = torch.isin(pairs[:, 0], indices)  # a group's completions are all in, or all out
    groups, local = torch.unique(pair_group[held], return_inverse=True)
    margins = None if batch["margins"] is None else batch["margins"].to(rewards.device)[held]
    return kwise_ranking_loss(rewards, pairs[held], local, margins), len(groups)


def _rng_state() -> tuple[Any, Any]:
    import torch

    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


@contextlib.contextmanager
def _replayed_rng(state: tuple[Any, Any]) -> Iterator[None]:
    """Run with the random state of `state` (dropout masks as in that pass), then go on from where the
    random state was."""
    import torch

    now = _rng_state()
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])
    try:
        yield
    finally:
        torch.set_rng_state(now[0])
        if now[1] is not None:
            torch.cuda.set_rng_state_all(now[1])
