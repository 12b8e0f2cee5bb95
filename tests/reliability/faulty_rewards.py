"""Rewards gone wrong, for PPO's guards."""

from __future__ import annotations


def constant(prompt: str, response: str) -> float:
    """A collapsed reward model: the same score whatever the response."""
    return 0.25


def infinite(prompt: str, response: str) -> float:
    """A reward that overflowed."""
    return float("inf")


# ---------------------------------------------------------------- user reward functions with bugs

def raises(prompt: str, response: str) -> float:
    """A function with a bug in it."""
    raise ValueError("cannot parse the answer")


def returns_none(prompt: str, response: str) -> float:
    """Forgot its `return` on one branch."""
    return None


def returns_str(prompt: str, response: str) -> float:
    """Returns the number it parsed, as text."""
    return "0.5"


def returns_list(prompt: str, response: str) -> float:
    """Scores per criterion, not summed."""
    return [1.0, 0.0]


def returns_tensor(prompt: str, response: str) -> float:
    """Per-token scores, not one per response."""
    import torch

    return torch.tensor([0.5, 0.25])


STATE = {"calls": 0, "broken": True}


def fails_after_first_rollout(prompt: str, response: str) -> float:
    """Scores the first rollout (8 responses), then raises while STATE["broken"]: a function fixed
    between a failed run and its --resume. Tests reset STATE."""
    STATE["calls"] += 1
    if STATE["broken"] and STATE["calls"] > 8:
        raise KeyError("answer")
    return float(len(response) % 3)
