"""PPO losses hand-computed on 3-element tensors (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from align.ppo.losses import entropy_from_logits, logprobs_of, policy_loss, value_loss


def test_policy_loss_by_hand():
    # ratios r = [1.5, 0.5, 1.0] (log r = [ln 1.5, ln 0.5, 0]); advantages [1, 1, -2]; ε = 0.2
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    out = policy_loss(logp, old, adv, torch.ones(1, 3), cliprange=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5; token 2: max(2, 2) = 2
    assert out.loss.item() == pytest.approx((-1.2 - 0.5 + 2.0) / 3)
    assert out.clipfrac.item() == pytest.approx(1 / 3)  # only token 0 took the clipped term
    assert out.ratio.item() == pytest.approx(1.0)  # (1.5 + 0.5 + 1) / 3
    assert out.approxkl.item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3)


def test_policy_loss_ignores_padding_and_its_gradient_follows_the_advantage():
    logp = torch.zeros(1, 3, requires_grad=True)
    out = policy_loss(logp, torch.zeros(1, 3), torch.tensor([[2.0, -1.0, 50.0]]), torch.tensor([[1.0, 1.0, 0.0]]), 0.2)
    assert out.loss.item() == pytest.approx((-2.0 + 1.0) / 2)
    out.loss.backward()
    # d/dlogp of -A·exp(logp) at logp=0 is -A / n_real
    assert logp.grad.flatten().tolist() == pytest.approx([-1.0, 0.5, 0.0])


def test_value_loss_by_hand():
    values, old = torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.5, 0.0, 2.1]])
    returns = torch.tensor([[2.0, 1.0, 2.0]])
    out = value_loss(values, old, returns, torch.ones(1, 3), cliprange_value=0.2)
    # token 0: V=1 (clipped to 0.7): max((1-2)², (0.7-2)²) = 1.69, clipped counts
    # token 1: V=0: max(1, 1) = 1 ; token 2: V=2 within 0.2 of 2.1: max(0, 0) = 0
    assert out.loss.item() == pytest.approx(0.5 * (1.69 + 1.0 + 0.0) / 3)
    assert out.clipfrac.item() == pytest.approx(1 / 3)


def test_a_value_inside_the_clip_range_is_not_counted_as_clipped():
    # V_old + (V − V_old) is 0.0065870378 here in float32, not V: the clipped term came out an ulp
    # larger and val/clipfrac reported clipping on a step that moved V by 0.004 (seen in a PPO run)
    values = torch.tensor([[0.006587038282305002]], requires_grad=True)
    old, returns = torch.tensor([[0.0021466214675456285]]), torch.tensor([[0.008380268700420856]])
    out = value_loss(values, old, returns, torch.ones(1, 1), cliprange_value=0.2)
    assert out.clipfrac.item() == 0.0
    out.loss.backward()
    assert values.grad.item() == pytest.approx(values.item() - returns.item())  # d/dV ½(V − R)²


def test_entropy_and_logprobs():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [10.0, -10.0, -10.0, -10.0]]])
    assert entropy_from_logits(logits)[0].tolist() == pytest.approx([math.log(4), 0.0], abs=1e-6)
    # temperature 2 halves the logits: log softmax([1, 0]) at token 0
    lp = logprobs_of(torch.tensor([[[2.0, 0.0]]]), torch.tensor([[0]]), temperature=2.0)
    assert lp.item() == pytest.approx(1 - math.log(math.e + 1))
