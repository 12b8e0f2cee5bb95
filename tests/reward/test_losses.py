"""The K-wise InstructGPT loss against a direct transcription of the formula."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from align.reward.losses import kwise_ranking_loss, ranking_pairs


def transcription(groups_rewards, groups_ranks, margin=0.0):
    """loss = mean over prompts of -1/C(K,2) sum_{y_w above y_l} log sigmoid(r_w - r_l - m), with plain floats."""
    per_prompt = []
    for rewards, ranks in zip(groups_rewards, groups_ranks):
        terms = [math.log(1 / (1 + math.exp(-(rewards[i] - rewards[j] - margin))))
                 for i, j in itertools.permutations(range(len(ranks)), 2) if ranks[i] < ranks[j]]
        per_prompt.append(-sum(terms) / len(terms))
    return sum(per_prompt) / len(per_prompt)


def flatten(groups_rewards, groups_ranks):
    rewards, pairs, pair_group, offset = [], [], [], 0
    for g, (rs, ranks) in enumerate(zip(groups_rewards, groups_ranks)):
        rewards += rs
        for w, l in ranking_pairs(ranks):
            pairs.append((offset + w, offset + l))
            pair_group.append(g)
        offset += len(rs)
    return torch.tensor(rewards, dtype=torch.float64), torch.tensor(pairs), torch.tensor(pair_group)


def test_ranking_pairs_skip_ties():
    assert ranking_pairs([0, 1, 2]) == [(0, 1), (0, 2), (1, 2)]
    assert ranking_pairs([1, 0, 1]) == [(1, 0), (1, 2)]  # the two rank-1 completions tie: no pair


def test_pairwise_case_by_hand():
    # one pair, r_w - r_l = 1: loss = -log sigmoid(1) = log(1 + e^-1) = 0.31326...
    loss = kwise_ranking_loss(torch.tensor([2.0, 1.0]), torch.tensor([[0, 1]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_kwise_matches_the_formula_and_weights_each_prompt_equally():
    groups_rewards = [[0.3, -1.2, 2.0, 0.1], [1.0, 0.5], [0.0, 0.7, -0.4]]
    groups_ranks = [[1, 3, 0, 2], [0, 1], [2, 0, 0]]
    rewards, pairs, pair_group = flatten(groups_rewards, groups_ranks)
    loss = kwise_ranking_loss(rewards, pairs, pair_group)
    assert loss.item() == pytest.approx(transcription(groups_rewards, groups_ranks), abs=1e-12)
    # a K=4 prompt has 6 pairs but weighs the same as a K=2 prompt with 1 pair
    assert pairs.shape[0] == 6 + 1 + 2


def test_margin_is_subtracted_inside_the_sigmoid():
    rewards, pairs, pair_group = flatten([[1.0, 0.0]], [[0, 1]])
    loss = kwise_ranking_loss(rewards, pairs, pair_group, margins=torch.tensor([0.5], dtype=torch.float64))
    assert loss.item() == pytest.approx(transcription([[1.0, 0.0]], [[0, 1]], margin=0.5))


def test_gradient_pushes_the_winner_up():
    rewards = torch.tensor([0.0, 0.0, 0.0], requires_grad=True)
    kwise_ranking_loss(rewards, torch.tensor([[0, 1], [0, 2], [1, 2]]), torch.tensor([0, 0, 0])).backward()
    assert rewards.grad[0] < 0 < rewards.grad[2] and rewards.grad[1] == pytest.approx(0.0)
