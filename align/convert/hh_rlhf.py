"""Anthropic HH-RLHF (github.com/anthropics/hh-rlhf) -> preferences.

One JSON object a line; `chosen` and `rejected` are whole transcripts of "\\n\\nHuman: ..." and
"\\n\\nAssistant: ..." turns that differ in the final assistant turn. The prompt is the shared
dialogue up to the final "\\n\\nAssistant:"; chosen and rejected are the two final assistant turns.
Written as messages, so chat templates apply.

An empty final Assistant turn is a real preference: in the harmlessness data the annotator preferred
saying nothing to a harmful reply (4 of the first 1156 pairs of harmless-base/test), so it is kept, and
align's stages read it. `drop_empty` (`--drop-empty`) leaves out a pair with an empty final turn on
either side, for tools that cannot take one, and lists each in the Report.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

from align.convert.report import Report, convert_rows
from align.core.readers import Row
from align.core.record_fields import Bad

# a turn starts after "\n\n"; the first may also open the text with no newlines, as in many re-exports
HH_TURN = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant):[ ]?")
ROLE = {"Human": "user", "Assistant": "assistant"}


def hh_turns(transcript: str) -> list[dict[str, str]]:
    """"\\n\\nHuman: a\\n\\nAssistant: b" -> [{"role": "user", "content": "a"}, {"role": "assistant", ...}]."""
    parts = HH_TURN.split(transcript)
    if parts[0].strip():
        raise Bad(None, 'transcript does not start with "\\n\\nHuman:"')
    return [{"role": ROLE[speaker], "content": text.strip()} for speaker, text in zip(parts[1::2], parts[2::2])]


EMPTY = "empty final Assistant turn, left out (--drop-empty)"


def convert_hh(row: Row, drop_empty: bool = False) -> dict[str, Any]:
    d = row.data
    for name in ("chosen", "rejected"):
        if not isinstance(d.get(name), str):
            raise Bad(name, "missing or not a string")
    chosen, rejected = hh_turns(d["chosen"]), hh_turns(d["rejected"])
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if not turns or turns[-1]["role"] != "assistant":
            raise Bad(name, "transcript does not end with an Assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise Bad("rejected", "chosen and rejected do not share the dialogue before the final Assistant turn")
    if not chosen[:-1]:
        raise Bad("chosen", "no Human turn before the final Assistant turn")
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if drop_empty and not turns[-1]["content"]:
            raise Bad(name, EMPTY)
    if chosen[-1]["content"] == rejected[-1]["content"]:
        raise Bad("rejected", "identical to chosen")
    return {"prompt": chosen[:-1], "chosen": [chosen[-1]], "rejected": [rejected[-1]]}


def read_hh(rows: list[Row], report: Report, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Every convertible record; options: drop_empty."""
    records = list(convert_rows(rows, report, partial(convert_hh, drop_empty=options["drop_empty"])))
    report.pairs += len(records)
    return records
