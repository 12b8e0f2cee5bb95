"""Rewards gone wrong, for PPO's guards."""

from __future__ import annotations


def constant(prompt: str, response: str) -> float:
    """A collapsed reward model: the same score whatever the response."""
    return 0.25


def infinite(prompt: str, response: str) -> float:
    """A reward that overflowed."""
    return float("inf")
