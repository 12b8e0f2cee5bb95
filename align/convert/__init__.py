"""Public data -> our formats, as one table. The CLI's `align data convert --from NAME` reads it.

    Converter         a source's name, the function that turns its rows into our records, the kind of
                      data it writes, one line of help, and the options it takes
    Option            one option of one converter (a flag or a choice); the CLI offers it as --NAME
    CONVERTERS        name -> Converter
    OPTIONS           option name -> (Option, the converters that take it), for the CLI
    converter(name)   the Converter, or an AlignError naming the known ones
    convert(...)      files of one source, or a data set by name (`datasets.load_dataset`) -> one
                      JSONL file of ours, written atomically
    pairs_to_kto      preferences and rankings -> KTO's unpaired rows (align.convert.kto)

Each source has its module (hh_rlhf, oasst, instructions for Alpaca and Dolly, ultrafeedback,
pku_saferlhf); a converter converts every record it can, and counts in the Report what it skipped and
why, with FILE:LINE for each skipped record: nothing is dropped silently. Adding a source is a
module and a line in the table; an option of its own is an Option in that line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from align.convert.hh_rlhf import read_hh
from align.convert.hub import hub_rows
from align.convert.instructions import read_instructions
from align.convert.kto import pairs_to_kto
from align.convert.oasst import read_oasst
from align.convert.pku_saferlhf import AXES, read_pku_saferlhf
from align.convert.report import Report
from align.convert.ultrafeedback import RATINGS, read_ultrafeedback, read_ultrafeedback_binarized
from align.core import rundir
from align.core.errors import AlignError, DataError
from align.core.readers import Row, read_rows
from align.core.records import Kind


@dataclass(frozen=True)
class Option:
    name: str
    """The key in `options`; the CLI's flag is --NAME, dashes for underscores."""
    help: str
    choices: tuple[str, ...] = ()
    """The values it takes, the first the default; none: an on/off flag (default off)."""
    multiple: bool = False
    """A flag given any number of times (`--lang en --lang de`): a tuple of strings, default ()."""

    @property
    def default(self) -> Any:
        return self.choices[0] if self.choices else () if self.multiple else False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Converter:
    name: str
    """What `--from` takes."""
    read: Callable[[list[Row], Report, dict[str, Any]], Iterable[dict[str, Any]]]
    """read(rows, report, options): the records in our format; counts into the report."""
    kind: Kind
    """The kind of data it writes, as `align data validate --kind` and the stages read it."""
    summary: str
    """One line of help."""
    options: tuple[Option, ...] = ()
    """Options of this source only; `convert(..., options={name: value})` and the CLI's --NAME."""


CONVERTERS: dict[str, Converter] = {c.name: c for c in (
    Converter("hh-rlhf", read_hh, "preferences",
              "Anthropic HH-RLHF transcripts {chosen, rejected} -> preferences as messages (an empty final "
              "Assistant turn is kept: saying nothing was preferred, or rejected; --drop-empty lists and leaves it out).",
              (Option("drop_empty", "leave out, and list, the pairs whose final Assistant turn is empty on either side "
                                    "(kept by default: in harmlessness data saying nothing is a real answer)."),)),
    Converter("oasst", read_oasst, "rankings",
              "OpenAssistant oasst1/oasst2 trees or message table -> one ranking per prompter message (--lang filters).",
              (Option("lang", "keep only these languages (repeatable), e.g. --lang en.", multiple=True),)),
    Converter("alpaca", read_instructions, "instructions",
              "Alpaca {instruction, input, output} -> messages."),
    Converter("dolly", read_instructions, "instructions",
              "Dolly {instruction, context, response} -> messages."),
    Converter("ultrafeedback", read_ultrafeedback, "rankings",
              "openbmb/UltraFeedback {instruction, completions} -> one ranking of the 4 completions by a rating "
              "(--rating, default fine-grained: the mean of the 4 aspect ratings); equal ratings tie.",
              (Option("rating", "the rating that ranks completions: fine-grained (the mean of the "
                                "four aspect ratings, UltraRM's and Argilla's choice), overall (the critique's "
                                "overall_score, HuggingFaceH4/ultrafeedback_binarized's), or one aspect.",
                      RATINGS),)),
    Converter("ultrafeedback-binarized", read_ultrafeedback_binarized, "preferences",
              "HuggingFaceH4/ultrafeedback_binarized {prompt, chosen, rejected, score_chosen, score_rejected} "
              "-> preferences as messages; equal scores are ties and give no pair."),
    Converter("pku-saferlhf", read_pku_saferlhf, "preferences",
              "PKU-Alignment/PKU-SafeRLHF {prompt, response_0, response_1, better_response_id, safer_response_id} "
              "-> preferences on one axis (--axis better|safer, default better).",
              (Option("axis", "which judgement makes the pair: better (better_response_id, "
                              "helpfulness) or safer (safer_response_id, harmlessness).", AXES),)),
)}


def table_options() -> dict[str, tuple[Option, list[str]]]:
    """Option name -> (the Option, the converters that take it); one option shared must mean one thing."""
    table: dict[str, tuple[Option, list[str]]] = {}
    for entry in CONVERTERS.values():
        for option in entry.options:
            known, sources = table.setdefault(option.name, (option, []))
            assert (known.choices, known.multiple) == (option.choices, option.multiple), option.name
            sources.append(entry.name)
    return table


OPTIONS = table_options()


def converter(name: str) -> Converter:
    if name not in CONVERTERS:
        raise AlignError(f"unknown source {name!r} (known: {', '.join(CONVERTERS)})")
    return CONVERTERS[name]


def resolve_options(entry: Converter, given: dict[str, Any] | None) -> dict[str, Any]:
    """`given` checked against the converter's options, each missing one at its default."""
    own = {o.name: o for o in entry.options}
    for name, value in (given or {}).items():
        if name not in own:
            flag = "--" + name.replace("_", "-")
            takes = ", ".join(o.flag for o in entry.options) or "none"
            raise AlignError(f"{flag}: not an option of {entry.name} (its options: {takes})")
        if own[name].choices and value not in own[name].choices:
            raise AlignError(f"{own[name].flag}: {value!r} is not one of {', '.join(own[name].choices)}")
    return {name: (given or {}).get(name, option.default) for name, option in own.items()}


def convert(source: str, inputs: list[str], out_path: str, options: dict[str, Any] | None = None, *,
            dataset: str | None = None, split: str | None = None, data_dir: str | None = None) -> Report:
    """Convert `inputs` (concatenated), or the split of the data set named `dataset`, into `out_path`
    (JSONL, written atomically). `options`: the converter's own (see CONVERTERS), e.g. {"drop_empty": True}.

    Bad records are skipped and listed; a run that converts nothing is an error and writes nothing."""
    if Path(out_path).is_dir():
        raise DataError([f"{out_path}: is a directory; give the output file's name"])
    records, report = convert_records(source, inputs, options, dataset=dataset, split=split, data_dir=data_dir)
    write_jsonl(Path(out_path), records)
    return report


def convert_records(source: str, inputs: list[str], options: dict[str, Any] | None = None, *, dataset: str | None = None,
                    split: str | None = None, data_dir: str | None = None) -> tuple[list[dict[str, Any]], Report]:
    """convert's records and Report, in memory."""
    entry = converter(source)
    settings = resolve_options(entry, options)
    if bool(inputs) == bool(dataset):
        raise AlignError("give input files or --dataset NAME, not both" if inputs else "give input files or --dataset NAME")
    if not dataset and (split or data_dir):
        raise AlignError(f"{'--split' if split else '--data-dir'} applies to --dataset only, not to input files")
    report = Report()
    records: list[dict[str, Any]] = []
    for rows in ([hub_rows(dataset, split or "train", data_dir)] if dataset else map(_file_rows(report), inputs)):
        records += entry.read(rows, report, settings)
    report.written = len(records)
    if not records:
        what = "no records" if not report.read else f"nothing converted ({report.read} records read)"
        raise DataError([f"{dataset or ', '.join(map(str, inputs))}: {what}", *report.problems])
    return records, report


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    rundir.write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _file_rows(report: Report) -> Callable[[str], list[Row]]:
    def rows_of(path: str) -> list[Row]:
        rows, problems = read_rows(path)
        report.unreadable(problems)
        return rows
    return rows_of


__all__ = ["CONVERTERS", "OPTIONS", "Converter", "Option", "Report", "convert", "converter", "pairs_to_kto"]
