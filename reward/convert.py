"""Public preference data -> our formats: Anthropic HH-RLHF, OpenAssistant (oasst1/oasst2),
and Alpaca/Dolly instructions -> messages.

Each converter reads every record, writes what converts, and counts what it skipped and why,
with FILE:LINE for each skipped record: nothing is dropped silently.

HH-RLHF (github.com/anthropics/hh-rlhf): one JSON object a line, `chosen` and `rejected` are whole
transcripts of "\\n\\nHuman: ..." and "\\n\\nAssistant: ..." turns that differ in the final
assistant turn. The prompt is the shared dialogue up to the final "\\n\\nAssistant:".

OpenAssistant (oasst1/oasst2 exports): message trees, one tree a line (`message_tree_id`,
`prompt` = the root message, each message with `message_id`, `role` prompter|assistant, `text`,
`lang`, `rank`, `deleted`, `replies`), or the flat message table (one message a line or row, with
`parent_id`). At every prompter message, its non-deleted assistant replies that carry a rank form
one ranking (rank 0 best) when there are at least two; the prompt is the conversation from the
root down to that prompter message.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from align.core import rundir
from align.core.errors import DataError
from align.core.records import Bad, Row, clip, parse_instruction, read_rows

# a turn starts after "\n\n"; the first may also open the text with no newlines, as in many re-exports
HH_TURN = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant):[ ]?")
ROLE = {"Human": "user", "Assistant": "assistant", "prompter": "user", "assistant": "assistant"}


@dataclass
class Report:
    read: int = 0
    written: int = 0
    pairs: int = 0
    skipped: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

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


# ---------------------------------------------------------------- HH-RLHF


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


def convert_rows(path: str, report: Report, convert_row: Any) -> Iterator[dict[str, Any]]:
    """convert_row over every row of a file; a row it rejects (Bad) is skipped and listed."""
    rows, problems = read_rows(path)
    report.unreadable(problems)
    for row in rows:
        report.read += 1
        try:
            yield convert_row(row)
        except Bad as e:
            report.skip(row.source, str(e))


# ---------------------------------------------------------------- OpenAssistant


def _rank(value: Any) -> int | None:
    """oasst ranks are ints or null in JSON, floats with NaN for null in parquet exports."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
            or (isinstance(value, float) and not (math.isfinite(value) and value.is_integer()))):
        raise Bad("rank", f"expected an integer >= 0 or null, got {clip(repr(value))}")
    return int(value)


def oasst_groups(root: dict[str, Any], where: str, report: Report, langs: set[str] | None) -> Iterator[dict[str, Any]]:
    """Walk one message tree; yield a ranking at every prompter message with >= 2 ranked replies."""
    stack: list[tuple[dict[str, Any], list[dict[str, str]], set[str]]] = [(root, [], set())]
    while stack:
        message, history, seen = stack.pop()
        mid = message.get("message_id")
        key = mid if isinstance(mid, str) else id(message)  # a malformed id must not stop the cycle check
        if key in seen:
            raise Bad("replies", f"cycle at message {mid}")
        seen = seen | {key}
        if message.get("deleted"):
            report.skipped["deleted message (its replies left out too)"] += 1
            continue
        role, text = message.get("role"), message.get("text")
        if not isinstance(role, str) or role not in ROLE or not isinstance(text, str):
            bad_role = not isinstance(role, str) or role not in ROLE
            raise Bad("role" if bad_role else "text", f"message {clip(str(mid))}: bad role or text")
        conversation = history + [{"role": ROLE[role], "content": text}]
        replies = [r for r in message.get("replies") or [] if isinstance(r, dict)]
        if role == "prompter" and (langs is None or _lang(message) in langs):
            ranked = [r for r in replies if not r.get("deleted") and r.get("role") == "assistant"
                      and _rank(r.get("rank")) is not None and isinstance(r.get("text"), str) and r["text"].strip()
                      and (langs is None or _lang(r) in langs)]
            unranked = [r for r in replies if not r.get("deleted") and r.get("role") == "assistant"
                        and _rank(r.get("rank")) is None]
            if unranked:
                report.skipped["assistant reply without a rank"] += len(unranked)
            if len(ranked) >= 2:
                ranks = [_rank(r["rank"]) for r in ranked]
                if len({r["text"].strip() for r in ranked}) < len(ranked):
                    # a ranking with two equal completions is refused when read (records.parse_ranking)
                    report.skip(f"{where} message {mid}", "two ranked replies with the same text")
                elif len(set(ranks)) >= 2:
                    order = sorted(set(ranks))
                    dense = [order.index(r) for r in ranks]
                    yield {"prompt": conversation, "completions": [r["text"] for r in ranked], "ranks": dense}
                else:
                    report.skip(f"{where} message {mid}", "all ranked replies tie")
            elif replies:
                report.skipped["prompter message with fewer than 2 ranked replies"] += 1
        elif role == "prompter" and langs is not None:
            report.skipped["language filtered out"] += 1
        for reply in reversed(replies):
            stack.append((reply, conversation, seen))


def _lang(message: dict[str, Any]) -> str | None:
    lang = message.get("lang")
    return lang if isinstance(lang, str) else None


def build_trees(rows: list[Row], report: Report) -> Iterator[tuple[dict[str, Any], str]]:
    """The flat message table -> trees, reporting missing parents and cycles."""
    by_id: dict[str, dict[str, Any]] = {}
    where: dict[str, str] = {}
    for row in rows:
        report.read += 1
        mid = row.data.get("message_id")
        if not isinstance(mid, str) or not mid:
            report.skip(row.source, 'field "message_id": missing or not a string')
            continue
        by_id[mid] = {**row.data, "replies": []}
        where[mid] = row.source
    roots = []
    for mid, message in by_id.items():
        parent = message.get("parent_id")
        if parent is None or (isinstance(parent, float) and math.isnan(parent)):
            roots.append(message)
        elif not isinstance(parent, str):
            report.skip(where[mid], f'field "parent_id": expected a message id or null, got {clip(repr(parent))}')
        elif parent in by_id:
            by_id[parent]["replies"].append(message)
        else:
            report.skip(where[mid], f'field "parent_id": parent {parent} not in the file')
    reachable = set()
    for root in roots:
        stack = [root]
        while stack:
            node = stack.pop()
            if node["message_id"] in reachable:
                continue
            reachable.add(node["message_id"])
            stack.extend(node["replies"])
        yield root, where[root["message_id"]]
    for mid in by_id.keys() - reachable:
        parent = by_id[mid].get("parent_id")
        if isinstance(parent, str) and parent in by_id:  # has a parent, yet no root reaches it: a cycle
            report.skip(where[mid], f'field "parent_id": message {mid} is in a cycle')


def convert_oasst_file(path: str, report: Report, langs: set[str] | None) -> Iterator[dict[str, Any]]:
    rows, problems = read_rows(path)
    report.unreadable(problems)
    if rows and "prompt" in rows[0].data and "message_tree_id" in rows[0].data:
        trees = []
        for row in rows:
            report.read += 1
            if not isinstance(row.data.get("prompt"), dict):
                report.skip(row.source, 'field "prompt": missing or not a message')
                continue
            trees.append((row.data["prompt"], row.source))
    else:
        trees = list(build_trees(rows, report))
    for root, where in trees:
        # a tree with one bad message is skipped whole: drop what its walk counted so far
        skipped, n_problems = report.skipped.copy(), len(report.problems)
        try:
            groups = list(oasst_groups(root, where, report, langs))
        except Bad as e:
            report.skipped, report.problems[n_problems:] = skipped, []
            report.skip(where, str(e))
            continue
        report.pairs += sum(1 for g in groups for a in g["ranks"] for b in g["ranks"] if a < b)
        yield from groups


# ---------------------------------------------------------------- instructions


def instruction_to_messages(row: Row) -> dict[str, Any]:
    record = parse_instruction(row)
    messages = list(record.messages)
    if record.context:
        messages[-1] = {**messages[-1], "content": f"{messages[-1]['content']}\n\n{record.context}"}
    return {"messages": messages + [{"role": "assistant", "content": record.response}]}


SOURCES = ("hh-rlhf", "oasst", "alpaca", "dolly")


def convert(source: str, inputs: list[str], out_path: str, langs: set[str] | None = None) -> Report:
    """Convert `inputs` (concatenated) into `out_path` (JSONL, written atomically).

    Bad records are skipped and listed; a run that converts nothing is an error and writes nothing."""
    if Path(out_path).is_dir():
        raise DataError([f"{out_path}: is a directory; give the output file's name"])
    report = Report()
    records: list[dict[str, Any]] = []
    for path in inputs:
        if source == "hh-rlhf":
            converted = list(convert_rows(path, report, convert_hh))
            report.pairs += len(converted)
            records += converted
        elif source == "oasst":
            records += convert_oasst_file(path, report, langs)
        elif source in ("alpaca", "dolly"):
            records += convert_rows(path, report, instruction_to_messages)
        else:
            raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    report.written = len(records)
    if not records:
        what = "no records" if not report.read else f"nothing converted ({report.read} records read)"
        raise DataError([f"{', '.join(map(str, inputs))}: {what}", *report.problems])
    rundir.write_text_atomic(Path(out_path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return report
