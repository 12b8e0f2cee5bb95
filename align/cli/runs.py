"""`align run`, `align status` and `align demo`: whole pipelines and their manifests."""

from __future__ import annotations

from pathlib import Path

import click

from align.cli.app import cli
from align.stages import STAGES


@cli.command()
@click.option("--config", "config_path", metavar="FILE|PRESET", required=True,
              help="Pipeline YAML, or a pipeline preset's name (`align configs list`), e.g. --config tiny.")
@click.option("--name", help="Run name (default: the config's name); outputs go to RUNS_DIR/NAME.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a pipeline setting (--set model=...) or a stage's (--set ppo.training.updates=50).")
@click.option("--from-stage", type=click.Choice(list(STAGES)),
              help="Rerun this stage and every later one, even if finished.")
@click.option("--allow-changes", is_flag=True,
              help="Let a stage resumed from its checkpoint take changed settings (recorded in the manifest).")
def run(config_path, name, overrides, from_stage, allow_changes):
    """The whole pipeline: finished stages are skipped, a killed stage resumes from its checkpoint."""
    from align.pipeline import Pipeline, check_run_name, load_config

    if name is not None:
        check_run_name(name)  # before the config: `--name ""` must not fall back to the config's name
    config = load_config(config_path, [*overrides, *([f"name={name}"] if name is not None else [])])
    echo_results(Pipeline(config, echo=click.echo).run(from_stage=from_stage, allow_changes=allow_changes))


@cli.command()
@click.argument("run_dir", type=click.Path())
def status(run_dir):
    """Each stage of an `align run` directory: state, time, headline figures."""
    echo_status(Path(run_dir))


def echo_results(result) -> None:
    echo_status(result.root)
    if result.report is not None:
        from align.eval.report import summary_table

        click.echo(summary_table(result.metrics))
        click.echo(f"report: {result.report}")


def echo_status(root: Path) -> None:
    from align.pipeline import status_rows

    rows = status_rows(root)
    click.echo(f"{'stage':8s} {'status':8s} {'time':>7s}  figures")
    for row in rows:
        took = f"{row['seconds']:.0f} s" if row["seconds"] is not None else "-"
        figures = "  ".join(f"{k}={v:.4g}" for k, v in row["headline"].items())
        click.echo(f"{row['stage']:8s} {row['status']:8s} {took:>7s}  {figures}")
        if row["error"]:
            click.echo(f"{'':8s} error: {row['error']}")
    click.echo(f"manifest: {root / 'manifest.json'}")


@cli.command()
@click.option("--out", "out_dir", type=click.Path(), default="runs/demo", show_default=True)
def demo(out_dir):
    """SFT -> reward model -> PPO -> evaluation on the embedded SmolLM2-135M-Instruct and the demo data."""
    from align.demo.run import run_demo

    result = run_demo(Path(out_dir), echo=click.echo)
    echo_results(result)
