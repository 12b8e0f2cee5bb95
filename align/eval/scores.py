"""Scores over answers, as pure functions of numbers and strings (no models here).

Conventions, stated once:
- A mean comes with a percentile bootstrap 95% interval (Efron & Tibshirani 1993, ch. 13):
  resample the per-prompt values with replacement, take the mean, read the 2.5th and 97.5th
  percentiles of those means.
- Win rate of A against B: on each prompt A's answer wins (1) if its reward is higher, ties (0.5)
  if equal, loses (0); the rate is the mean over prompts. Identical answers are scored once, so
  they tie exactly.
- distinct-n (Li et al. 2016): distinct n-grams / all n-grams over all answers, whitespace tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def bootstrap_ci(values: Sequence[float], *, samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, (low, high); (nan, nan) for no values."""
    x = np.asarray(values, dtype=np.float64)  # (N,)
    if x.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(samples, x.size))].mean(axis=1)  # (samples,)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def with_ci(name: str, values: Sequence[float], *, samples: int = 1000, seed: int = 0) -> dict[str, float]:
    """`name`, `name_ci_low`, `name_ci_high` for the mean of `values`."""
    low, high = bootstrap_ci(values, samples=samples, seed=seed)
    return {name: mean(values), f"{name}_ci_low": low, f"{name}_ci_high": high}


def win_outcomes(rewards_a: Sequence[float], rewards_b: Sequence[float]) -> list[float]:
    """Per prompt: 1 when A's reward is higher, 0.5 on a tie, 0 when lower."""
    if len(rewards_a) != len(rewards_b):
        raise ValueError(f"win rate needs paired answers: {len(rewards_a)} vs {len(rewards_b)}")
    return [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(rewards_a, rewards_b)]


def length_matched(lengths_a: Sequence[float], lengths_b: Sequence[float], tolerance: float) -> list[int]:
    """The prompts whose two answers are of like length: they differ by at most `tolerance` of the
    longer (and by at most one token, for short ones). A reward model that likes length wins
    the unmatched prompts on length alone; on these it has to tell the answers apart otherwise."""
    return [i for i, (a, b) in enumerate(zip(lengths_a, lengths_b)) if abs(a - b) <= max(1.0, tolerance * max(a, b))]


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson's correlation; NaN when either side is constant or there are fewer than 3 points."""
    n = len(xs)
    if n < 3:
        return math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams of all texts; nan when there is no n-gram at all."""
    grams = [g for text in texts for g in ngrams(text.split(), n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def best_of(rewards: Sequence[Sequence[float]], n: int) -> list[int]:
    """Per prompt, the index of the highest-reward answer among its first n (first one on a tie)."""
    return [int(np.argmax(list(r[:n]))) for r in rewards]
