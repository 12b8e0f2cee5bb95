"""Alpaca {"instruction","input","output"} and Dolly {"instruction","context","response"} -> messages.

One module for both: they differ only in field names, which `align.core.records.parse_instruction`
already reads. The context (Alpaca "input", Dolly "context") follows the instruction in the user
turn, after a blank line.
"""

from __future__ import annotations

from typing import Any

from align.convert.report import Report, convert_rows
from align.core.readers import Row
from align.core.records import parse_instruction


def instruction_to_messages(row: Row) -> dict[str, Any]:
    record = parse_instruction(row)
    messages = list(record.messages)
    if record.context:
        messages[-1] = {**messages[-1], "content": f"{messages[-1]['content']}\n\n{record.context}"}
    return {"messages": messages + [{"role": "assistant", "content": record.response}]}


def read_instructions(rows: list[Row], report: Report, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Every convertible record (no options)."""
    return list(convert_rows(rows, report, instruction_to_messages))
