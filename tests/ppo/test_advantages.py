"""KL estimators, shaped rewards, GAE, whitening and KL controllers against their equations."""

from __future__ import annotations

import math

import pytest
import torch

from align.ppo.advantages import (
    AdaptiveKLController, gae, kl_per_token, masked_mean, shaped_rewards, whiten,
)


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    # k1 = log p - log ref = [0.5, -1.0]
    assert kl_per_token(logp, ref, "k1").flatten().tolist() == pytest.approx([0.5, -1.0])
    # k3 = (ref/p - 1) - log(ref/p): log(ref/p) = [-0.5, 1.0] -> [e^-0.5 - 1 + 0.5, e^1 - 1 - 1]
    k3 = kl_per_token(logp, ref, "k3")
    assert k3.flatten().tolist() == pytest.approx([math.exp(-0.5) - 0.5, math.e - 2])
    assert (k3 >= 0).all()


def test_k3_is_never_negative_and_both_estimate_the_true_kl():
    torch.manual_seed(0)
    p_logits, q_logits = torch.randn(6), torch.randn(6)
    p, q = p_logits.softmax(0), q_logits.softmax(0)
    true_kl = (p * (p.log() - q.log())).sum()
    samples = torch.multinomial(p, 200_000, replacement=True)
    logp, logq = p.log()[samples][None], q.log()[samples][None]
    for estimator in ("k1", "k3"):
        assert kl_per_token(logp, logq, estimator).mean().item() == pytest.approx(true_kl.item(), abs=0.01)
    assert (kl_per_token(logp, logq, "k3") >= 0).all()


def test_shaped_rewards_put_the_score_on_the_last_real_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards = shaped_rewards(torch.tensor([1.0, -1.0]), kl, mask, kl_coef=0.1)
    # row 0: -0.1*[0.1, 0.2, 0.3] + [0, 0, 1]; row 1: -0.1*[0.5, 0.5] + [0, -1], padding gets nothing
    assert rewards.flatten().tolist() == pytest.approx([-0.01, -0.02, 0.97, -0.05, -1.05, 0.0])


def gae_transcription(rewards, values, gamma, lam):
    """A_t = Σ_l (γλ)^l δ_{t+l}, with δ_t = r_t + γ V_{t+1} − V_t and V_T = 0: the definition, not the recursion."""
    T = len(rewards)
    v = values + [0.0]
    deltas = [rewards[t] + gamma * v[t + 1] - v[t] for t in range(T)]
    return [sum((gamma * lam) ** l * deltas[t + l] for l in range(T - t)) for t in range(T)]


def test_gae_matches_the_sum_of_discounted_td_errors():
    rewards, values = [0.1, -0.2, 1.0], [0.5, 0.3, 0.8]
    adv, ret = gae(torch.tensor([rewards]), torch.tensor([values]), torch.ones(1, 3), gamma=0.9, lam=0.8)
    expected = gae_transcription(rewards, values, 0.9, 0.8)
    assert adv[0].tolist() == pytest.approx(expected)
    assert ret[0].tolist() == pytest.approx([a + v for a, v in zip(expected, values)])


def test_gae_by_hand_with_gamma_1_and_padding():
    # γ=1, λ=0.5; values [1, 2], rewards [0, 3], then one padded position
    # δ_1 = 3 + 0 − 2 = 1 ; δ_0 = 0 + 2 − 1 = 1 ; A_1 = 1 ; A_0 = 1 + 0.5·1 = 1.5
    adv, ret = gae(torch.tensor([[0.0, 3.0, 7.0]]), torch.tensor([[1.0, 2.0, 5.0]]), torch.tensor([[1.0, 1.0, 0.0]]),
                   gamma=1.0, lam=0.5)
    assert adv.flatten().tolist() == pytest.approx([1.5, 1.0, 0.0])
    assert ret.flatten().tolist() == pytest.approx([2.5, 3.0, 0.0])


def test_whiten_uses_real_tokens_only():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = whiten(x, mask)
    # mean 2, unbiased var 1 -> [-1, 0, 1], padding 0
    assert w.flatten().tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    assert whiten(x, mask, shift_mean=False).flatten().tolist() == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)
    assert masked_mean(x, mask).item() == 2.0


def test_adaptive_kl_controller_follows_ziegler():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    ctl.update(current_kl=9.0, n_steps=100)  # e = clip(9/6 - 1) = 0.2 -> β·(1 + 0.2·0.01)
    assert ctl.value == pytest.approx(0.1 * 1.002)
    ctl.update(current_kl=5.4, n_steps=100)  # e = -0.1 -> ·(1 - 0.001)
    assert ctl.value == pytest.approx(0.1 * 1.002 * 0.999)
