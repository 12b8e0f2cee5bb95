"""A reward-model ensemble's scores made one reward (Coste et al. 2023, "Reward Model Ensembles Help Mitigate
Overoptimization", arXiv 2310.02743). Each member's score is first normalised by its own mean/std, so the
members speak in one unit and their spread means disagreement, not scale.

    mean           the members' mean
    uwo            uncertainty-weighted: mean - λ · std, where the members disagree the reward is discounted
    wco            worst case: the lowest member's score
    disagreement   the members' standard deviation (over members, divided by K), per completion
    combine        one of the objectives over (K, N) member scores -> (N,)

Coste et al. penalise the variance; the std is in reward units, so λ reads as "how many standard deviations
of disagreement one unit of reward is worth". A one-member ensemble has std 0: every objective is its score.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # configs name the objectives without importing torch
    import torch

Objective = Literal["mean", "uwo", "wco"]
OBJECTIVES: tuple[str, ...] = ("mean", "uwo", "wco")


def disagreement(scores: torch.Tensor) -> torch.Tensor:
    """(K, N) member scores -> (N,) their standard deviation over the members (population: / K)."""
    return scores.std(dim=0, correction=0)


def combine(scores: torch.Tensor, objective: Objective = "mean", uwo_lambda: float = 1.0) -> torch.Tensor:
    """(K, N) member scores -> (N,) the ensemble's reward under `objective`."""
    if scores.dim() != 2:
        raise ValueError(f"expected (members, completions) scores, got shape {tuple(scores.shape)}")
    if objective == "mean":
        return scores.mean(dim=0)
    if objective == "uwo":
        return scores.mean(dim=0) - uwo_lambda * disagreement(scores)
    if objective == "wco":
        return scores.min(dim=0).values
    raise ValueError(f"unknown ensemble objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
