"""Known rewards for PPO toy tasks."""

from __future__ import annotations


def digit_count(prompt: str, response: str) -> float:
    """How many digits the response holds: a reward a random policy can climb token by token."""
    return float(sum(c.isdigit() for c in response))


def nan_after_first_call(prompt: str, response: str) -> float:
    """Finite for the first rollout, then NaN: a reward model gone bad mid-run."""
    nan_after_first_call.calls = getattr(nan_after_first_call, "calls", 0) + 1
    return float("nan") if nan_after_first_call.calls > 8 else 1.0


def half(prompt: str, response: str) -> float:
    """A judge that is not the reward: every answer scores 0.5."""
    return 0.5
