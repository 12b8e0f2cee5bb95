"""Public data -> our formats, as one table. The CLI's `align data convert --from NAME` reads it.

    Converter         a source's name, the function that reads one of its files, the kind of data
                      it writes, and one line of help
    CONVERTERS        name -> Converter
    converter(name)   the Converter, or an AlignError naming the known ones
    convert(...)      files of one source -> one JSONL file of ours, written atomically
    pairs_to_kto      preferences and rankings -> KTO's unpaired rows (align.convert.kto)

Each source has its module (hh_rlhf, oasst, instructions for Alpaca and Dolly); a reader converts
every record it can, and counts in the Report what it skipped and why, with FILE:LINE for each
skipped record: nothing is dropped silently. Adding a source is a module and a line in the table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from align.convert.hh_rlhf import read_hh
from align.convert.instructions import read_instructions
from align.convert.kto import pairs_to_kto
from align.convert.oasst import read_oasst
from align.convert.report import Report
from align.core import rundir
from align.core.errors import AlignError, DataError
from align.core.records import Kind


@dataclass(frozen=True)
class Converter:
    name: str
    """What `--from` takes."""
    read: Callable[[str, Report, set[str] | None], Iterable[dict[str, Any]]]
    """read(path, report, langs): the records of one file in our format; counts into the report."""
    kind: Kind
    """The kind of data it writes, as `align data validate --kind` and the stages read it."""
    summary: str
    """One line of help."""


CONVERTERS: dict[str, Converter] = {c.name: c for c in (
    Converter("hh-rlhf", read_hh, "preferences",
              "Anthropic HH-RLHF transcripts {chosen, rejected} -> preferences as messages."),
    Converter("oasst", read_oasst, "rankings",
              "OpenAssistant oasst1/oasst2 trees or message table -> one ranking per prompter message (--lang filters)."),
    Converter("alpaca", read_instructions, "instructions",
              "Alpaca {instruction, input, output} -> messages."),
    Converter("dolly", read_instructions, "instructions",
              "Dolly {instruction, context, response} -> messages."),
)}


def converter(name: str) -> Converter:
    if name not in CONVERTERS:
        raise AlignError(f"unknown source {name!r} (known: {', '.join(CONVERTERS)})")
    return CONVERTERS[name]


def convert(source: str, inputs: list[str], out_path: str, langs: set[str] | None = None) -> Report:
    """Convert `inputs` (concatenated) into `out_path` (JSONL, written atomically).

    Bad records are skipped and listed; a run that converts nothing is an error and writes nothing."""
    read = converter(source).read
    if Path(out_path).is_dir():
        raise DataError([f"{out_path}: is a directory; give the output file's name"])
    report = Report()
    records: list[dict[str, Any]] = []
    for path in inputs:
        records += read(path, report, langs)
    report.written = len(records)
    if not records:
        what = "no records" if not report.read else f"nothing converted ({report.read} records read)"
        raise DataError([f"{', '.join(map(str, inputs))}: {what}", *report.problems])
    rundir.write_text_atomic(Path(out_path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return report


__all__ = ["CONVERTERS", "Converter", "Report", "convert", "converter", "pairs_to_kto"]
