"""Held-out figures of a reward model, from the rewards it gave each group's completions."""

from __future__ import annotations

import statistics

from align.reward.formats import Group

# bins of |r_w - r_l|: is the model right more often where it is surer?
CALIBRATION_EDGES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, float("inf"))


def ranking_metrics(groups: list[Group], rewards: list[list[float]]) -> dict[str, float]:
    """eval/accuracy over all pairs; eval/accuracy_top1 per group (best completion scored highest);
    eval/margin = mean r_w - r_l; reward mean/std; accuracy by reward-difference bin."""
    diffs, top1 = [], []
    for group, scores in zip(groups, rewards):
        diffs += [scores[w] - scores[l] for w, l in group.pairs]
        best = min(group.ranks)
        top1.append(group.ranks[max(range(len(scores)), key=scores.__getitem__)] == best)
    flat = [r for scores in rewards for r in scores]
    out = {
        "eval/accuracy": sum(d > 0 for d in diffs) / len(diffs),
        "eval/accuracy_top1": sum(top1) / len(top1),
        "eval/margin": statistics.fmean(diffs),
        "eval/pairs": len(diffs),
        "eval/reward_mean": statistics.fmean(flat),
        "eval/reward_std": statistics.pstdev(flat),
    }
    for lo, hi in zip(CALIBRATION_EDGES, CALIBRATION_EDGES[1:]):
        in_bin = [d for d in diffs if lo <= abs(d) < hi]
        name = f"eval/calibration/{lo:g}-{hi:g}"
        out[f"{name}/pairs"] = len(in_bin)
        out[f"{name}/accuracy"] = sum(d > 0 for d in in_bin) / len(in_bin) if in_bin else None
    return out
