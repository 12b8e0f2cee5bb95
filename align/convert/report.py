"""What a conversion did: records read, written, pairs, and every record skipped with FILE:LINE and why.

Nothing is dropped silently: each converter counts what it leaves out, and lists the records it
could not convert.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from align.core.readers import Row
from align.core.record_fields import Bad


@dataclass
class Report:
    read: int = 0
    written: int = 0
    pairs: int = 0
    """(better, worse) pairs the written records hold: one a preference, C(K,2) less ties a ranking."""
    skipped: Counter = field(default_factory=Counter)
    """reason -> how many records (or messages) were left out for it."""
    problems: list[str] = field(default_factory=list)
    """`FILE:LINE: reason` of every skipped record."""

    def skip(self, where: str, reason: str) -> None:
        self.skipped[reason] += 1
        self.problems.append(f"{where}: {reason}")

    def unreadable(self, problems: list[str]) -> None:
        """Lines the reader could not parse (malformed JSON, not UTF-8): counted and listed."""
        if problems:
            self.read += len(problems)
            self.skipped["unreadable line"] += len(problems)
            self.problems += problems

    def summary(self) -> dict[str, Any]:
        return {"read": self.read, "written": self.written, "pairs": self.pairs,
                "skipped": sum(self.skipped.values()), "skipped_by_reason": dict(self.skipped)}


def convert_rows(rows: list[Row], report: Report, convert_row: Callable[[Row], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """convert_row over every row; a row it rejects (Bad) is skipped and listed."""
    for row in rows:
        report.read += 1
        try:
            yield convert_row(row)
        except Bad as e:
            report.skip(row.source, str(e))
