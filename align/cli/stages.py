"""The stage commands: `align sft|reward|ppo|dpo|kto|orpo|grpo|rloo|eval`, each a thin layer over the Python API
with the same --config / --set / --print-config / --out / --resume options, and `align reward score`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from align.cli.app import cli
from align.core.errors import AlignError
from align.stages import STAGES


# a setting each stage has, for its --set example, and a preset of its own (tests/test_cli.py loads every one)
SET_EXAMPLES = {"ppo": "training.learning_rate=1e-5", "eval": "eval_size=50"}
PRESET_EXAMPLES = {"eval": "smollm2-demo"}


def stage_options(fn, stage: str = "sft"):
    """--config, --set, --out, --overwrite, --resume: the same for every training stage."""
    fn = click.option("--allow-changes", is_flag=True,
                      help="With --resume: take settings that differ from the checkpoint's (recorded), instead of refusing.")(fn)
    fn = click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in the output dir.")(fn)
    fn = click.option("--overwrite", is_flag=True, help="Replace a finished or unfinished run in the output dir.")(fn)
    fn = click.option("--out", "out_dir", type=click.Path(), help="Output directory (overrides out_dir).")(fn)
    fn = click.option(
        "--set", "overrides", multiple=True, metavar="KEY=VALUE",
        help=f"Override one setting, dotted: --set {SET_EXAMPLES.get(stage, 'training.learning_rate=1e-4')} (repeatable).",
    )(fn)
    fn = click.option("--config", "config_path", metavar="FILE|PRESET",
                      help=f"YAML config file, or a preset's name (`align configs list`), e.g. --config "
                           f"{PRESET_EXAMPLES.get(stage, 'smollm2-qlora')}.")(fn)
    fn = click.option("--print-config", is_flag=True,
                      help="Print the resolved config (defaults, --config, --set) as YAML with each setting's "
                           "documentation, and stop.")(fn)
    return fn


def load_stage_config(stage: str, config_path, overrides, out_dir):
    from align.stages import stage_config

    overrides = list(overrides) + ([f"out_dir={out_dir}"] if out_dir else [])
    return stage_config(stage, config_path, overrides)


def run_stage(name: str, options: dict) -> None:
    """The body of every training command: config, train, headline figures, where the results are."""
    from align.stages import stage

    entry = stage(name)
    config = load_stage_config(name, options["config_path"], options["overrides"], options["out_dir"])
    if options["print_config"]:
        return print_config(config)
    if options["config_path"] is None:  # on stdout: stderr keeps the one line of an error, if one follows
        click.echo(defaults_note(name, config))
    figures = entry.train()(config, overwrite=options["overwrite"], resume=options["resume"],
                            allow_changes=options["allow_changes"])
    click.echo(json.dumps({k: figures.get(k) for k in entry.headline}))
    click.echo(f"{name} done: {config.out_dir}")


def print_config(config) -> None:
    from align.core.config_docs import documented_yaml

    click.echo(documented_yaml(config), nl=False)


def defaults_note(name: str, config) -> str:
    """What a stage run without --config trains: its built-in defaults, named, so no demo file is used unawares."""
    from align.core.model_card import data_paths

    from align.core.presets import presets

    files = [f"data.{field}={path}" for field, path in data_paths(getattr(config, "data", None))]
    names = ", ".join(p.name for p in presets(name))
    return (f"align {name}: no --config, so the built-in defaults: model.name={config.model.name}, "
            f"{', '.join(files) or 'no data files'}, out_dir={config.out_dir} (presets: --config {names or 'FILE'})")


# loggers whose warnings are about the libraries, not the user's run: the model-loading report (a reward head is
def training_command(name: str) -> click.Command:
    """`align NAME --config ... --set ...`: a registered stage's command, its help the registry's."""
    def command(**options):
        run_stage(name, options)

    command.__doc__ = STAGES[name].summary
    return cli.command(name=name)(stage_options(command, name))


@cli.group(invoke_without_command=True, help=STAGES["reward"].summary)
@lambda fn: stage_options(fn, "reward")
@click.pass_context
def reward(ctx, **options):
    if ctx.invoked_subcommand is None:
        run_stage("reward", options)


@reward.command("score")
@click.option("--model", "model_path", type=click.Path(), required=True, help="A reward stage dir (or its adapter/).")
@click.option("--data", "data_path", type=click.Path(), required=True,
              help='Records with "prompt" and "response", "completions", or "chosen"/"rejected".')
@click.option("-o", "--out", "out_path", type=click.Path(), required=True, help="Output JSONL.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--objective", type=click.Choice(["mean", "uwo", "wco"]), default="mean", show_default=True,
              help="An ensemble's reward from its members' normalised ones: their mean, mean - λ·std, or the lowest.")
@click.option("--uwo-lambda", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="λ of --objective uwo.")
def reward_score(model_path, data_path, out_path, batch_size, objective, uwo_lambda):
    """Write each record of DATA with its raw and normalised reward."""
    from align.reward.score import score_file

    n = score_file(model_path, data_path, out_path, batch_size, objective, uwo_lambda)
    click.echo(f"scored {n} completions -> {out_path}")

for _name in STAGES:
    if _name not in ("reward", "eval"):
        training_command(_name)


@cli.command("eval", help=STAGES["eval"].summary)
@lambda fn: stage_options(fn, "eval")
@click.option("--models", metavar="NAME=PATH,...",
              help="Models to compare: base=smollm2-135m-instruct,sft=runs/x/sft,aligned=runs/x/ppo.")
@click.option("--reward", "reward_dir", type=click.Path(), help="Reward stage dir: rewards, win rates, best-of-n.")
@click.option("--prompts", type=click.Path(), help="Held-out prompts (JSONL; a `reference` enables ROUGE/BLEU).")
@click.option("--size", type=int, help="Use the first N prompts (eval_size; 0 = all).")
@click.option("--best-of", type=int, help="Add a best-of-N row per model, picked by the reward model.")
@click.option("--judge", metavar="MODULE:FUNCTION", help="Score (prompt, response) -> float, e.g. align.demo.tasks:judge.")
@click.option("--few-shot", type=int, metavar="K",
              help="Add a row base_<K>shot: the base with K demonstrations from few_shot_data in its prompt.")
@click.option("--ppo-runs", metavar="NAME=PATH,...",
              help="PPO runs drawn together against KL (gold judge, proxy reward): single=runs/a/ppo,ensemble=runs/b/ppo.")
def eval_(models, reward_dir, prompts, size, best_of, judge, few_shot, ppo_runs, **options):
    from align.eval.report import summary_table
    from align.eval.run import evaluate

    flags = {"reward": reward_dir, "prompts": prompts, "eval_size": size, "best_of": best_of, "judge": judge,
             "few_shot": few_shot}
    overrides = [*options["overrides"], *(f"{k}={v}" for k, v in flags.items() if v is not None)]
    if models:
        overrides.append("models=" + json.dumps(parse_models(models)))  # replaces the config's models, not merged
    if ppo_runs:
        overrides.append("ppo_runs=" + json.dumps(parse_models(ppo_runs, "--ppo-runs")))
    config = load_stage_config("eval", options["config_path"], overrides, options["out_dir"])
    if options["print_config"]:
        return print_config(config)
    metrics = evaluate(config, overwrite=options["overwrite"], resume=options["resume"],
                       allow_changes=options["allow_changes"])
    click.echo(summary_table(metrics))
    click.echo(f"report: {Path(config.out_dir) / 'report.html'}")


def parse_models(text: str, option: str = "--models") -> dict[str, str]:
    """`base=a,sft=runs/x/sft` -> {"base": "a", "sft": "runs/x/sft"}."""
    models = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise AlignError(f"{option}: {item!r} is not NAME=PATH (e.g. --models base=smollm2-135m-instruct,sft=runs/x/sft)")
        models[name.strip()] = path.strip()
    return models
