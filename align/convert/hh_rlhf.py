"""Anthropic HH-RLHF (github.com/anthropics/hh-rlhf) -> preferences.

One JSON object a line; `chosen` and `rejected` are whole transcripts of "\\n\\nHuman: ..." and
"\\n\\nAssistant: ..." turns that differ in the final assistant turn. The prompt is the shared
dialogue up to the final "\\n\\nAssistant:"; chosen and rejected are the two final assistant turns.
Written as messages, so chat templates apply.
"""

from __future__ import annotations

import re
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


def convert_hh(row: Row) -> dict[str, Any]:
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
    if not chosen[-1]["content"] or not rejected[-1]["content"]:
        raise Bad("chosen" if not chosen[-1]["content"] else "rejected", "empty final Assistant turn")
    if chosen[-1]["content"] == rejected[-1]["content"]:
        raise Bad("rejected", "identical to chosen")
    return {"prompt": chosen[:-1], "chosen": [chosen[-1]], "rejected": [rejected[-1]]}


def read_hh(path: str, report: Report, langs: set[str] | None = None) -> list[dict[str, Any]]:
    """Every convertible record of one file; HH-RLHF carries no language, so `langs` is not used."""
    records = list(convert_rows(path, report, convert_hh))
    report.pairs += len(records)
    return records
