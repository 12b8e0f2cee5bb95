"""The InstructGPT reward-model loss over K-wise rankings (Ouyang et al. 2022, eq. 1).

For a prompt x with K ranked completions, every pair (y_w, y_l) with y_w ranked above y_l
contributes, and the pairs of one prompt form one batch element:

    loss(θ) = -1/C(K,2) · E_x [ Σ_(y_w, y_l) log σ( r_θ(x, y_w) − r_θ(x, y_l) − m ) ]

so a prompt with many completions does not dominate the batch, and each completion is scored
once per forward pass however many pairs it is in. Pairwise data is the K=2 case. With ties a
prompt has fewer than C(K,2) pairs; we divide by the pairs it has. m is an optional margin
(Llama 2's margin loss, Touvron et al. 2023, eq. 2), zero by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ranking_pairs(ranks: list[int]) -> list[tuple[int, int]]:
    """(winner, loser) index pairs of one ranking; rank 0 is best, equal ranks give no pair."""
    return [(i, j) for i, ri in enumerate(ranks) for j, rj in enumerate(ranks) if ri < rj]


def kwise_ranking_loss(
    rewards: torch.Tensor,  # (N,) r_θ(x, y) of every completion in the batch, flattened
    pairs: torch.Tensor,  # (P, 2) long: indices into `rewards` of (y_w, y_l)
    pair_group: torch.Tensor,  # (P,) long: which prompt (batch element) each pair belongs to
    margins: torch.Tensor | None = None,  # (P,) margin m of each pair, or None for 0
) -> torch.Tensor:
    """Mean over prompts of −1/n_pairs(x) · Σ log σ(r_w − r_l − m). Returns a scalar."""
    diff = rewards[pairs[:, 0]] - rewards[pairs[:, 1]]  # (P,)
    if margins is not None:
        diff = diff - margins
    n_groups = int(pair_group.max()) + 1
    pairs_per_group = torch.bincount(pair_group, minlength=n_groups).to(rewards.dtype)  # (G,)
    weights = 1.0 / pairs_per_group[pair_group]  # (P,) 1/C(K,2) for each pair of its prompt
    return -(weights * F.logsigmoid(diff)).sum() / n_groups
