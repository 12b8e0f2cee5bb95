"""The data formats of DESIGN.md: the four record types, their parsers, and load_records.

    instructions  {"messages"} | {"prompt","completion"} | Alpaca {"instruction","input","output"}
                  | Dolly {"instruction","context","response"}
    preferences   {"prompt","chosen","rejected"} (strings or message lists), optional "margin"
    rankings      {"prompt","completions","ranks"}, rank 0 best, equal ranks are ties
    prompts       {"prompt"} or {"messages"}, optional "reference"

Each concern lives in a module of its own:

    readers        data files -> rows named FILE:LINE: JSONL (plain or gzip), JSON, CSV, parquet, saved
                   dataset dirs; the byte-order mark; the limit per record (ALIGN_MAX_RECORD_MB)
    record_fields  checks of one field (text, messages, prompt, completion) raising Bad, which names it
    records        (this one) rows -> Instruction, Preference, Ranking, Prompt; parse_rows; load_records

A compared completion (preferences, rankings) may be empty: in harmlessness data saying nothing is a
real answer, preferred to a harmful one. An instruction's response, a demonstration, may not.

Readers never stop at the first bad record: they collect every problem, so a user fixes a file
in one pass. Training refuses a file with any problem, before a model is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from align.core.errors import DataError
from align.core.readers import Row, read_rows
from align.core.record_fields import Bad, Messages, clip, completion_field, messages_field, prompt_field, text_field

__all__ = [
    "KINDS", "PARSERS", "Instruction", "Kind", "Preference", "Prompt", "Ranking",
    "load_records", "parse_instruction", "parse_preference", "parse_prompt", "parse_ranking", "parse_rows",
    # kept importable from here, where they were defined before the split
    "Bad", "Row", "clip", "completion_field", "prompt_field", "read_rows",
]

Kind = Literal["instructions", "preferences", "rankings", "prompts"]
KINDS: tuple[str, ...] = ("instructions", "preferences", "rankings", "prompts")


@dataclass(frozen=True)
class Instruction:
    """One SFT example: the conversation before the response, and the response to learn."""

    messages: Messages  # prompt turns; the last is the user's
    response: str
    context: str  # Alpaca "input" / Dolly "context"; "" when absent
    source: str


@dataclass(frozen=True)
class Preference:
    prompt: Messages
    chosen: str
    rejected: str
    margin: float | None
    source: str


@dataclass(frozen=True)
class Ranking:
    prompt: Messages
    completions: tuple[str, ...]
    ranks: tuple[int, ...]  # 0 is best; equal ranks are ties
    source: str


@dataclass(frozen=True)
class Prompt:
    messages: Messages
    reference: str | None
    source: str
    task: str | None = None  # which task of a multi-task set it belongs to: the evaluation's figures per task


def parse_instruction(row: Row) -> Instruction:
    d = row.data
    if "messages" in d or "conversations" in d:
        field = "messages" if "messages" in d else "conversations"
        messages = messages_field(d, field)
        if messages[-1]["role"] != "assistant":
            raise Bad(field, "the last message must be the assistant's response")
        if not messages[-1]["content"].strip():
            raise Bad(f"{field}[{len(messages) - 1}].content", "empty response")
        if len(messages) < 2 or not any(m["role"] == "user" and m["content"].strip() for m in messages[:-1]):
            raise Bad(field, "needs a non-empty user message before the response")
        return Instruction(messages[:-1], messages[-1]["content"], "", row.source)
    if "prompt" in d or "completion" in d:
        return Instruction(prompt_field(d), completion_field(d, "completion"), "", row.source)
    if "instruction" in d:
        if "output" in d or "input" in d:  # Alpaca
            response, context = text_field(d, "output"), text_field(d, "input", required=False, allow_empty=True)
        elif "response" in d or "context" in d:  # Dolly
            response, context = text_field(d, "response"), text_field(d, "context", required=False, allow_empty=True)
        else:
            raise Bad("output", 'missing (Alpaca shape has "output", Dolly shape has "response")')
        user = {"role": "user", "content": text_field(d, "instruction")}
        return Instruction((user,), response, context, row.source)
    raise Bad(None, _no_shape(d, 'instructions: "messages", "prompt"+"completion", Alpaca "instruction"+"input"+"output" or Dolly "instruction"+"context"+"response"'))


def parse_preference(row: Row) -> Preference:
    d = row.data
    if "prompt" not in d and isinstance(d.get("chosen"), str) and d["chosen"].lstrip("\n").startswith("Human:"):
        raise Bad("prompt", "missing: this looks like a raw HH-RLHF transcript; convert the file first with "
                            "`align data convert --from hh-rlhf FILE -o prefs.jsonl`")
    if "prompt" not in d and isinstance(d.get("chosen"), list) and isinstance(d.get("rejected"), list):
        prompt, chosen, rejected = _split_implicit_prompt(d)
    else:
        if "chosen" not in d and "rejected" not in d:
            raise Bad(None, _no_shape(d, 'preferences: "prompt", "chosen", "rejected"'))
        prompt = prompt_field(d)
        chosen, rejected = completion_field(d, "chosen", allow_empty=True), completion_field(d, "rejected", allow_empty=True)
    if chosen.strip() == rejected.strip():
        raise Bad("rejected", "identical to chosen: no preference to learn")
    margin = d.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        raise Bad("margin", f"expected a number, got {type(margin).__name__}")
    if margin is not None and not math.isfinite(margin):
        raise Bad("margin", f"must be a finite number, got {margin}")  # JSON readers accept NaN and Infinity
    return Preference(prompt, chosen, rejected, None if margin is None else float(margin), row.source)


def _split_implicit_prompt(d: dict[str, Any]) -> tuple[Messages, str, str]:
    """TRL's implicit-prompt shape: chosen and rejected are whole conversations sharing a prefix."""
    chosen, rejected = messages_field(d, "chosen"), messages_field(d, "rejected")
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise Bad("chosen", "with no prompt field, chosen and rejected must end with an assistant turn")
    if chosen[:-1] != rejected[:-1] or len(chosen) < 2:
        raise Bad("rejected", "with no prompt field, chosen and rejected must share every turn but the last")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def parse_ranking(row: Row) -> Ranking:
    d = row.data
    if "message_tree_id" in d or ("message_id" in d and "role" in d):
        raise Bad(None, "this looks like an OpenAssistant export; convert the file first with "
                        "`align data convert --from oasst FILE -o rankings.jsonl`")
    if "completions" not in d and "ranks" not in d:
        raise Bad(None, _no_shape(d, 'rankings: "prompt", "completions", "ranks"'))
    prompt = prompt_field(d)
    completions = d.get("completions")
    if not isinstance(completions, list):
        raise Bad("completions", "missing or not a list")
    if len(completions) < 2:
        raise Bad("completions", f"a ranking needs at least 2 completions, got {len(completions)}")
    texts = tuple(completion_field({"c": c}, "c", f"completions[{i}]", allow_empty=True) for i, c in enumerate(completions))
    first: dict[str, int] = {}  # as for preferences: two equal completions leave nothing to prefer
    for i, text in enumerate(texts):
        if text.strip() in first:
            raise Bad(f"completions[{i}]", f"identical to completions[{first[text.strip()]}]: no preference to learn")
        first[text.strip()] = i
    ranks = d.get("ranks")
    if not isinstance(ranks, list):
        raise Bad("ranks", "missing or not a list")
    if len(ranks) != len(texts):
        raise Bad("ranks", f"has {len(ranks)} entries for {len(texts)} completions")
    for i, rank in enumerate(ranks):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise Bad(f"ranks[{i}]", f"expected an integer >= 0, got {clip(repr(rank))}")
    if len(set(ranks)) < 2:
        raise Bad("ranks", "all completions tie: no preference to learn")
    return Ranking(prompt, texts, tuple(ranks), row.source)


def parse_prompt(row: Row) -> Prompt:
    d = row.data
    task = d.get("task")
    if task is not None and not (isinstance(task, str) and task.strip()):
        raise Bad("task", f"expected a task name, got {task!r}")
    task = task.strip() if task else None
    if "messages" in d:
        messages = messages_field(d, "messages")
        if messages[-1]["role"] == "assistant" and "reference" not in d:
            # a whole conversation: the prompt is all but the final answer, which is the reference
            messages, reference = messages[:-1], messages[-1]["content"]
            if not any(m["role"] == "user" and m["content"].strip() for m in messages):
                raise Bad("messages", "no non-empty user message before the final assistant turn")
            return Prompt(messages, reference, row.source, task)
        if not any(m["content"].strip() for m in messages):
            raise Bad("messages", "empty: every message has empty content")
    elif "prompt" in d:
        messages = prompt_field(d)
    else:
        raise Bad(None, _no_shape(d, 'prompts: "prompt" or "messages", optional "reference" and "task"'))
    reference = d.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise Bad("reference", f"expected a string, got {type(reference).__name__}")
    return Prompt(messages, reference, row.source, task)


PARSERS: dict[str, Callable[[Row], Any]] = {
    "instructions": parse_instruction,
    "preferences": parse_preference,
    "rankings": parse_ranking,
    "prompts": parse_prompt,
}


def _no_shape(d: dict[str, Any], expected: str) -> str:
    keys = clip(", ".join(clip(str(k), 40) for k in sorted(d, key=str)), 200)
    return f"no known shape; expected {expected}; found keys: {keys or '(none)'}"


def parse_rows(rows: list[Row], kind: str) -> tuple[list[Any], list[str]]:
    parse = PARSERS[kind]
    records, problems = [], []
    for row in rows:
        try:
            records.append(parse(row))
        except Bad as e:
            problems.append(f"{row.source}: {e}")
    return records, problems


def load_records(path: str | Path, kind: str) -> list[Any]:
    """Every record of `path` as `kind`, or a DataError listing every bad one."""
    rows, problems = read_rows(path)
    records, bad = parse_rows(rows, kind)
    problems += bad
    if problems:
        raise DataError(problems, total=len(rows) + len(problems) - len(bad))
    if not records:
        raise DataError([f"{path}: no records"])
    return records

