"""Reward-model figures by hand."""

from __future__ import annotations

import pytest

from align.reward.formats import Group
from align.reward.metrics import ranking_metrics


def test_accuracy_top1_margin_and_calibration_by_hand():
    groups = [Group((), ("a", "b", "c"), (0, 1, 2), None, "f:1"), Group((), ("a", "b"), (1, 0), None, "f:2")]
    rewards = [[2.0, 1.0, 1.5], [0.0, 0.1]]
    m = ranking_metrics(groups, rewards)
    # pairs: (a>b) d=1.0 right, (a>c) d=0.5 right, (b>c) d=-0.5 wrong, second group (b>a) d=0.1 right
    assert m["eval/accuracy"] == pytest.approx(3 / 4)
    assert m["eval/margin"] == pytest.approx((1.0 + 0.5 - 0.5 + 0.1) / 4)
    assert m["eval/accuracy_top1"] == 1.0  # a is top in group 1, b in group 2
    assert m["eval/calibration/0-0.25/pairs"] == 1 and m["eval/calibration/0-0.25/accuracy"] == 1.0
    assert m["eval/calibration/0.5-1/pairs"] == 2 and m["eval/calibration/0.5-1/accuracy"] == 0.5
    assert m["eval/calibration/1-2/accuracy"] == 1.0
    assert m["eval/calibration/4-inf/accuracy"] is None
