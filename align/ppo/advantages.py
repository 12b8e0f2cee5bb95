"""From scores to advantages: KL-shaped per-token rewards, GAE, whitening, KL controllers.

Pure functions over tensors; shapes: B sequences, T response tokens; `mask` is 1 on real
response tokens (up to and including EOS) and 0 on padding.
"""

from __future__ import annotations

from typing import Literal

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask)
    return var * n / (n - 1).clamp(min=1)  # Bessel's correction, as TRL and OpenRLHF


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the real tokens; rewards keep their mean (shift_mean=False)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_per_token(
    logprobs: torch.Tensor,  # (B, T) log π_θ(a_t|s_t) of the sampled tokens
    ref_logprobs: torch.Tensor,  # (B, T) log π_ref(a_t|s_t)
    estimator: Literal["k1", "k3"] = "k1",
) -> torch.Tensor:
    """Estimates of KL(π_θ‖π_ref) per sampled token (Schulman, "Approximating KL divergence").

    k1 = log r,  r = π_θ/π_ref: unbiased, can be negative on one sample.
    k3 = (π_ref/π_θ − 1) − log(π_ref/π_θ): unbiased and never negative.
    """
    log_ratio = logprobs - ref_logprobs  # (B, T)
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}")


def shaped_rewards(
    scores: torch.Tensor,  # (B,) normalised reward-model score of each response
    kl: torch.Tensor,  # (B, T) per-token KL estimate
    mask: torch.Tensor,  # (B, T)
    kl_coef: float,  # β
) -> torch.Tensor:
    """r_t = −β·KL_t at every response token, plus the score at the last real token (Ziegler et al. 2019)."""
    rewards = -kl_coef * kl * mask  # (B, T)
    last = (mask.sum(1).long() - 1).clamp(min=0)  # (B,) index of the last real token (EOS)
    rewards[torch.arange(rewards.shape[0]), last] += scores
    return rewards


def gae(
    rewards: torch.Tensor,  # (B, T) r_t
    values: torch.Tensor,  # (B, T) V(s_t)
    mask: torch.Tensor,  # (B, T)
    gamma: float,  # γ
    lam: float,  # λ
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16); returns (advantages, returns).

        δ_t = r_t + γ V(s_{t+1}) − V(s_t)          (V after the last real token is 0)
        A_t = δ_t + γ λ A_{t+1}
        R_t = A_t + V(s_t)                          (the value target)
    """
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # δ_t
        last_gae = delta + gamma * lam * last_gae  # A_t
        advantages[:, t] = last_gae
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


class FixedKLController:
    """β stays where it is set."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Ziegler et al. 2019, §2.2: steer β so the KL to the reference tracks a target.

        e_t = clip(KL_t / KL_target − 1, −0.2, 0.2)
        β_{t+1} = β_t (1 + K_β e_t),  K_β = n_steps / horizon
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon
