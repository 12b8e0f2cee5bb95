"""PPO losses over tensors (Schulman et al. 2017); losses never see models, only tensors.

Shapes: B sequences, T response tokens, V vocabulary; `mask` is 1 on real response tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from align.ppo.advantages import masked_mean


class PolicyLoss(NamedTuple):
    loss: torch.Tensor  # scalar, to minimise
    clipfrac: torch.Tensor  # share of tokens where the clipped term was taken
    approxkl: torch.Tensor  # ½·E[(log r)²], TRL's policy/approxkl
    ratio: torch.Tensor  # mean π_θ/π_old over real tokens


class ValueLoss(NamedTuple):
    loss: torch.Tensor
    clipfrac: torch.Tensor


def policy_loss(
    logprobs: torch.Tensor,  # (B, T) log π_θ(a_t|s_t), with grad
    old_logprobs: torch.Tensor,  # (B, T) log π_θ_old(a_t|s_t) from the rollout
    advantages: torch.Tensor,  # (B, T) Â_t
    mask: torch.Tensor,  # (B, T)
    cliprange: float,  # ε
) -> PolicyLoss:
    """Clipped surrogate, arXiv 1707.06347 eq. 7, as a loss:

        r_t = exp(log π_θ − log π_old)
        L = E_t[ max(−Â_t r_t, −Â_t clip(r_t, 1−ε, 1+ε)) ]
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss_max = torch.max(pg_loss1, pg_loss2)
    return PolicyLoss(
        loss=masked_mean(pg_loss_max, mask),
        clipfrac=masked_mean((pg_loss2 > pg_loss1).float(), mask).detach(),
        approxkl=(0.5 * masked_mean(log_ratio**2, mask)).detach(),
        ratio=masked_mean(ratio, mask).detach(),
    )


def value_loss(
    values: torch.Tensor,  # (B, T) V_θ(s_t), with grad
    old_values: torch.Tensor,  # (B, T) V_old(s_t) from the rollout
    returns: torch.Tensor,  # (B, T) R_t, the GAE value targets
    mask: torch.Tensor,  # (B, T)
    cliprange_value: float,  # ε_V
) -> ValueLoss:
    """Clipped value loss (as in OpenAI's baselines and the N+ details):

        V_clip = V_old + clip(V_θ − V_old, −ε_V, ε_V)
        L_V = ½ E_t[ max((V_θ − R_t)², (V_clip − R_t)²) ]
    """
    # V_old + clip(V_θ − V_old) rounds away from V_θ by an ulp inside the range (then counted as clipped)
    values_clipped = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    vf_loss1 = (values - returns) ** 2
    vf_loss2 = (values_clipped - returns) ** 2
    return ValueLoss(
        loss=0.5 * masked_mean(torch.max(vf_loss1, vf_loss2), mask),
        clipfrac=masked_mean((vf_loss2 > vf_loss1).float(), mask).detach(),
    )


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = logsumexp(z) − Σ softmax(z)·z per position: (B, T, V) -> (B, T)."""
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log π(a_t) of the given tokens under temperature-scaled logits: (B, T, V), (B, T) -> (B, T).

    The N+ details: divide by the sampling temperature in every log-prob pass, or the ratio
    π_θ/π_old starts away from 1.
    """
    logits = logits.float() / temperature
    return torch.gather(logits.log_softmax(-1), 2, tokens.unsqueeze(-1)).squeeze(-1)
