"""Preference and ranking records -> groups: one prompt, its K completions, their ranks."""

from __future__ import annotations

import random
from dataclasses import dataclass

from align.core.readers import read_rows
from align.core.records import Preference, Ranking, load_records
from align.reward.losses import ranking_pairs


@dataclass(frozen=True)
class Group:
    """One batch element of the K-wise loss."""

    prompt: tuple  # messages
    completions: tuple[str, ...]
    ranks: tuple[int, ...]  # 0 best; preferences are (0, 1)
    margin: float | None
    source: str

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return ranking_pairs(list(self.ranks))


def regroup(groups: list[Group], flat: list) -> list[list]:
    """Values of every completion of every group, in order (N,) -> one list per group."""
    out, i = [], 0
    for g in groups:
        out.append(flat[i:i + len(g.completions)])
        i += len(g.completions)
    return out


def to_group(record: Preference | Ranking) -> Group:
    if isinstance(record, Preference):
        return Group(record.prompt, (record.chosen, record.rejected), (0, 1), record.margin, record.source)
    return Group(record.prompt, record.completions, record.ranks, None, record.source)


def detect_kind(path: str) -> str:
    """`rankings` when the first record has completions, else `preferences`."""
    rows, _ = read_rows(path)
    first = rows[0].data if rows else {}
    return "rankings" if "completions" in first or "message_tree_id" in first or "message_id" in first else "preferences"


def load_groups(path: str) -> list[Group]:
    return [to_group(r) for r in load_records(path, detect_kind(path))]


def split_groups(groups: list[Group], eval_fraction: float, seed: int) -> tuple[list[Group], list[Group]]:
    shuffled = groups[:]
    random.Random(seed).shuffle(shuffled)
    n_eval = max(1, round(eval_fraction * len(shuffled))) if eval_fraction > 0 and len(shuffled) > 1 else 0
    return shuffled[n_eval:], shuffled[:n_eval]
