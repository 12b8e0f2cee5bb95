"""`align data validate` and `align data convert`."""

from __future__ import annotations

import json
import sys

import click

from align.cli.app import cli
from align.convert import CONVERTERS


@cli.group()
def data():
    """Check and convert data files."""


@data.command()
@click.argument("path", type=click.Path())
@click.option("--kind", type=click.Choice(["instructions", "preferences", "rankings", "prompts"]),
              help="Check the records as this kind [default: the kind most records are].")
def validate(path, kind):
    """Report every bad record of PATH as FILE:LINE: reason (a reason repeated many times is counted once);
    exit 2 if any. The kind of records is inferred, and which commands take it is said."""
    from align.core.readers import read_rows
    from align.core.validate import ACCEPTED_BY, fold_repeats, infer_kind, parse_every_kind

    rows, problems = read_rows(path)
    parsed = parse_every_kind(rows)
    inferred = infer_kind(parsed)
    checked = kind or inferred or "preferences"
    records, bad = parsed[checked]
    problems += bad
    for line in fold_repeats(problems):
        click.echo(line)
    if not records and not problems:
        click.echo(f"{path}: no records")
    how = "" if kind else ", inferred"
    click.echo(f"{path}: {len(records)} good, {len(problems)} bad ({checked}{how}; taken by {ACCEPTED_BY[checked]})")
    looks = len(parsed[inferred][0]) if inferred else 0
    if kind and inferred != kind and looks > len(records):
        click.echo(f"{path}: these look like {inferred} ({looks} of {len(rows)} records read as {inferred}; "
                   f"taken by {ACCEPTED_BY[inferred]}): check with --kind {inferred}")
    if problems or not records:
        sys.exit(2)


def converter_options(command):
    """One CLI option per converter option of the table (align.convert.OPTIONS): --drop-empty, --axis, ..."""
    from align.convert import OPTIONS

    for option, sources in reversed(OPTIONS.values()):
        where = f"{', '.join(sources)} only: {option.help}"
        if option.choices:
            command = click.option(option.flag, type=click.Choice(option.choices),
                                   help=f"{where} [default: {option.default}]")(command)
        else:
            command = click.option(option.flag, is_flag=not option.multiple, multiple=option.multiple, help=where)(command)
    return command


@data.command("convert")
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("--from", "source", type=click.Choice(list(CONVERTERS)), required=True,
              help="; ".join(f"{c.name}: {c.summary}" for c in CONVERTERS.values()))
@click.option("-o", "--out", "out_path", type=click.Path(), required=True)
@click.option("--dataset", help="Instead of INPUTS: a data set datasets.load_dataset resolves (hub id or local "
                                "script/dir), e.g. --dataset Anthropic/hh-rlhf --data-dir harmless-base --split test.")
@click.option("--split", help="With --dataset: the split to convert [default: train].")
@click.option("--data-dir", help="With --dataset: load_dataset's data_dir (HH-RLHF: harmless-base, helpful-base, ...).")
@converter_options
@click.option("--show-skipped", default=10, show_default=True, type=click.IntRange(min=0),
              help="How many skipped records to list.")
def convert_cmd(inputs, source, out_path, dataset, split, data_dir, show_skipped, **options):
    """Convert public data (HH-RLHF, OpenAssistant, Alpaca, Dolly, UltraFeedback, PKU-SafeRLHF) to ours.

    Options marked "X only" belong to converter X; giving one to another converter is an error."""
    from align.convert import convert

    given = {name: value for name, value in options.items() if value not in (None, False, ())}
    report = convert(source, list(inputs), out_path, given, dataset=dataset, split=split, data_dir=data_dir)
    for problem in report.problems[:show_skipped]:
        click.echo(f"skipped {problem}", err=True)
    if len(report.problems) > show_skipped:
        click.echo(f"... and {len(report.problems) - show_skipped} more skipped", err=True)
    click.echo(json.dumps(report.summary()))
    click.echo(f"wrote {report.written} records -> {out_path}")
