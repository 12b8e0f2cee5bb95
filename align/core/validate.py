"""`align data validate`: which kind of records a file holds, every bad record, and repeated problems folded.

    parse_every_kind  a file's rows read as each kind: (records, problems)
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


def parse_every_kind(rows: list[Row]) -> dict[str, tuple[list, list[str]]]:
    """The rows read as each kind: its records and its problems."""
    return {kind: parse_rows(rows, kind) for kind in KINDS}


def infer_kind(parsed: dict[str, tuple[list, list[str]]]) -> str | None:
    """The kind most records parse as, the more specific on a tie; None when none parse."""
    best = max(KINDS, key=lambda k: (len(parsed[k][0]), -KINDS.index(k)))
    return best if parsed[best][0] else None


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
