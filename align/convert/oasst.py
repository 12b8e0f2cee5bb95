"""OpenAssistant (oasst1/oasst2 exports) -> rankings.

Message trees, one tree a line (`message_tree_id`, `prompt` = the root message, each message with
`message_id`, `role` prompter|assistant, `text`, `lang`, `rank`, `deleted`, `replies`), or the flat
message table (one message a line or row, with `parent_id`). At every prompter message, its
non-deleted assistant replies that carry a rank form one ranking (rank 0 best) when there are at
least two; the prompt is the conversation from the root down to that prompter message.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

from align.convert.report import Report
from align.core.readers import Row
from align.core.record_fields import Bad, clip

ROLE = {"prompter": "user", "assistant": "assistant"}


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


def read_oasst(rows: list[Row], report: Report, options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every ranking of one export, trees or flat table; options: lang, the languages to keep (prompts and replies)."""
    langs = set(options["lang"]) or None
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
