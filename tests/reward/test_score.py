"""Scoring in batches of alike lengths."""

from __future__ import annotations

from align.reward.score import length_batches


def test_length_batches_group_alike_lengths_and_cover_every_index_once():
    lengths = [5, 90, 7, 88, 6, 91, 40]
    batches = length_batches(lengths, 3)
    assert batches == [[5, 1, 3], [6, 2, 4], [0]]  # 91 90 88 | 40 7 6 | 5
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert length_batches([], 4) == []
