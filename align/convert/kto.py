"""Preferences and rankings -> KTO's unpaired rows (Ethayarajh et al. 2024, arXiv 2402.01306).

KTO learns from single completions labelled desirable or undesirable, not from pairs. TRL's
KTOTrainer reads rows {"prompt", "completion", "label": bool}; from a preference dataset its
`unpair_preference_dataset` makes the chosen completion one desirable row and the rejected one an
undesirable row. We do the same, and for a ranking of K completions keep its ends only: the best
completion(s) desirable, the worst undesirable, the ones between left out. Why not every pair:

- KTO's label is absolute (is this completion good?), not relative. A middle completion is better
  than some and worse than others; every pair would give it rows labelled True and False for the
  same prompt, whose loss terms pull its likelihood up and down at once.
- every pair repeats the best and the worst completion K-1 times each, so a prompt with K = 5
  gives 20 rows from 5 completions: the weighting by C(K,2) that the reward model's 1/C(K,2)
  exists to avoid (reward/losses.py).
- K = 2 is then exactly TRL's split of a preference, so a preference and a two-way ranking agree.

The paper's own code (ContextualAI/HALOs, `get_oasst`) pairs adjacent ranks of OpenAssistant and
splits every pair, so its middle completions are both; we do not. Ties at the top (or bottom) all
count as best (or worst), so a ranking may give more desirable rows than undesirable ones:
KTOConfig's desirable_weight and undesirable_weight exist to rebalance that.
"""

from __future__ import annotations

from typing import Any, Iterable

from align.core.records import Preference


def pairs_to_kto(groups: Iterable[Any]) -> list[dict[str, Any]]:
    """Preference and Ranking records (or anything with prompt, completions, ranks) -> KTO rows.

    Each row is {"prompt": messages, "completion": [one assistant message], "label": bool},
    TRL's conversational layout, like the rows DPO gets (align/prefs/train.py). Per group: the
    desirable rows, then the undesirable ones, each in the group's order.
    """
    rows = []
    for group in groups:
        if isinstance(group, Preference):
            completions, ranks = (group.chosen, group.rejected), (0, 1)
        else:  # Ranking, or reward.formats.Group
            completions, ranks = group.completions, group.ranks
        best, worst = min(ranks), max(ranks)
        if best == worst:
            continue  # all tie: nothing is better than anything
        for label, rank in ((True, best), (False, worst)):
            rows += [{"prompt": list(group.prompt), "completion": [{"role": "assistant", "content": text}],
                      "label": label} for text, r in zip(completions, ranks) if r == rank]
    return rows

