"""The `align` command: one thin command per stage over the Python API.

Heavy imports (torch, transformers, trl) happen inside commands, so `align --help` is instant.
Errors caused by input (AlignError) print one message and exit 2, with no traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from align.core.errors import AlignError


class AlignGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AlignError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)


def stage_options(fn):
    """--config, --set, --out, --overwrite, --resume: the same for every training stage."""
    fn = click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in the output dir.")(fn)
    fn = click.option("--overwrite", is_flag=True, help="Replace a finished or unfinished run in the output dir.")(fn)
    fn = click.option("--out", "out_dir", type=click.Path(), help="Output directory (overrides out_dir).")(fn)
    fn = click.option(
        "--set", "overrides", multiple=True, metavar="KEY=VALUE",
        help="Override one setting, dotted: --set training.learning_rate=1e-4 (repeatable).",
    )(fn)
    fn = click.option("--config", "config_path", type=click.Path(), help="YAML config file.")(fn)
    return fn


def load_stage_config(cls, config_path, overrides, out_dir):
    from align.core.config import load_config

    overrides = list(overrides) + ([f"out_dir={out_dir}"] if out_dir else [])
    return load_config(cls, config_path, overrides)


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@click.group(cls=AlignGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """align: QLoRA SFT, reward models from rankings, PPO, and evaluation."""
    _quiet_libraries()


@cli.command()
@stage_options
def sft(config_path, overrides, out_dir, overwrite, resume):
    """Stage 1: instruction SFT (QLoRA by default) with TRL's SFTTrainer."""
    from sft.config import SFTConfig
    from sft.train import train

    config = load_stage_config(SFTConfig, config_path, overrides, out_dir)
    figures = train(config, overwrite=overwrite, resume=resume)
    click.echo(json.dumps({k: figures.get(k) for k in ("eval/loss_before", "eval/loss", "train/runtime_s")}))
    click.echo(f"SFT done: {config.out_dir}")


@cli.group()
def data():
    """Check and convert data files."""


@data.command()
@click.argument("path", type=click.Path())
@click.option("--kind", type=click.Choice(["instructions", "preferences", "rankings", "prompts"]), required=True)
def validate(path, kind):
    """Report every bad record of PATH as FILE:LINE: reason; exit 2 if any."""
    from align.core.records import parse_rows, read_rows

    rows, problems = read_rows(path)
    records, bad = parse_rows(rows, kind)
    problems += bad
    for problem in problems:
        click.echo(problem)
    click.echo(f"{path}: {len(records)} good, {len(problems)} bad ({kind})")
    if problems or not records:
        sys.exit(2)


@cli.command()
@click.option("--out", "out_dir", type=click.Path(), default="runs/demo", show_default=True)
def demo(out_dir):
    """Run the demo on the embedded SmolLM2-135M-Instruct and the shipped demo data."""
    from align.demo.run import run_demo

    run_demo(Path(out_dir))


def main() -> None:
    cli(prog_name="align")


if __name__ == "__main__":
    main()
