"""`align data validate`: which kind of records a file holds, every bad record, and repeated problems folded.

    infer_kind        the kind most of a file's records parse as (the more specific kind on a tie)
    fold_repeats      FILE:LINE: reason lines, a reason given many times shown a few times and counted
"""

from __future__ import annotations

import re
from collections import Counter

from align.core.readers import Row
from align.core.records import parse_rows

# most specific first: a preference or an instruction also reads as a prompt
KINDS = ("preferences", "rankings", "instructions", "prompts")
ACCEPTED_BY = {"instructions": "sft", "preferences": "reward, dpo, kto, orpo", "rankings": "reward, dpo, kto, orpo",
               "prompts": "ppo, grpo, rloo, eval"}
WHERE = re.compile(r"^(?P<where>.*?:\d+(?:\[\d+\])?): ")


def good_counts(rows: list[Row]) -> dict[str, int]:
    """Records of each kind that parse."""
    return {kind: len(parse_rows(rows, kind)[0]) for kind in KINDS}


def infer_kind(counts: dict[str, int]) -> str | None:
    """The kind most records parse as, the more specific on a tie; None when none parse."""
    best = max(KINDS, key=lambda k: (counts[k], -KINDS.index(k)))
    return best if counts[best] else None


def fold_repeats(problems: list[str], keep: int = 3) -> list[str]:
    """Problems in order; a reason that recurs past `keep` times shows its first `keep` lines, then one
    line counting the rest."""
    reasons = [WHERE.sub("", p, count=1) for p in problems]
    total = Counter(reasons)
    shown: Counter = Counter()
    out = []
    for problem, reason in zip(problems, reasons):
        shown[reason] += 1
        if shown[reason] <= keep:
            out.append(problem)
        elif shown[reason] == keep + 1:
            out.append(f"  ... and {total[reason] - keep} more lines: {reason}")
    return out
