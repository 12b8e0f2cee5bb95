"""The `align` command: one thin command per stage over the Python API.

Heavy imports (torch, transformers, trl) happen inside commands, so `align --help` is instant.
Errors caused by input (AlignError) print one message and exit 2, with no traceback.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from pathlib import Path

import click

from align.core.errors import AlignError, Terminated
from align.convert import CONVERTERS
from align.stages import STAGES


class AlignGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AlignError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)
        except Terminated as e:  # status.json already says failed; exit as the signal would have
            click.echo(f"error: {e}", err=True)
            ctx.exit(128 + e.signum)
        except OSError as e:
            if e.errno not in USER_OS_ERRORS:
                raise
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"error: {where}{e.strerror or e}{USER_OS_ERRORS[e.errno]}", err=True)
            ctx.exit(2)


# errors of the machine the user can act on, not bugs: one line each, no traceback
USER_OS_ERRORS = {
    errno.ENOSPC: " (free space there, then --resume continues from the newest checkpoint)",
    errno.EDQUOT: " (the disk quota is full; free space, then --resume continues from the newest checkpoint)",
    errno.EROFS: " (a read-only file system: write elsewhere with --out)",
    errno.EACCES: " (no permission: write elsewhere with --out)",
    errno.EPERM: " (not permitted: write elsewhere with --out)",
}


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
# new by design), bitsandbytes' optional CPU kernels that an offline machine cannot fetch
LIBRARY_LOGGERS = ("transformers", "kernels", "bitsandbytes", "accelerate", "peft", "trl", "datasets", "httpx")


def _quiet_libraries(verbose: int = 0) -> None:
    """align's own warnings always show; the libraries' warnings (their deprecations, load reports, optional
    kernels) only with -v. Errors always show."""
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        return
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(transformers|peft|trl|accelerate|torch)\b")
    warnings.filterwarnings("ignore", message=r".*pin_memory.*no accelerator is found")


@click.group(cls=AlignGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="align", prog_name="align", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", count=True, help="Show the libraries' warnings too (-vv: debug logs).")
def cli(verbose):
    """align: QLoRA SFT, reward models from rankings, PPO, and evaluation."""
    _quiet_libraries(verbose)


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
def reward_score(model_path, data_path, out_path, batch_size):
    """Write each record of DATA with its raw and normalised reward."""
    from align.reward.score import score_file

    n = score_file(model_path, data_path, out_path, batch_size)
    click.echo(f"scored {n} completions -> {out_path}")


@cli.command("export")
@click.argument("source", metavar="RUN_OR_STAGE_DIR", type=click.Path())
@click.option("-o", "--out", "out_dir", type=click.Path(), required=True, help="The directory to write the model to.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="Of the saved weights (float32 keeps the merged values exactly).")
@click.option("--overwrite", is_flag=True, help="Replace OUT when it already holds files.")
def export_cmd(source, out_dir, dtype, overwrite):
    """A run's aligned policy, a stage's model or a reward model as one standalone transformers model: the 4-bit
    base dequantised, the LoRA update merged, tokenizer and chat template included."""
    from align.export import export, weights_of

    weights = weights_of(source)
    click.echo(f"exporting {weights.directory} ({'reward model' if weights.reward else 'policy'}) -> {out_dir}")
    export(source, out_dir, dtype=dtype, overwrite=overwrite)
    loader = "AutoModelForSequenceClassification" if weights.reward else "AutoModelForCausalLM"
    click.echo(f"done: {loader}.from_pretrained({str(out_dir)!r}) loads it; README.md is its model card")


@cli.command("chat")
@click.argument("source", metavar="MODEL")
@click.option("--system", help="A system message that opens every conversation.")
@click.option("--temperature", type=float, default=0.7, show_default=True, help="0: greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
def chat_cmd(source, system, temperature, top_p, max_new_tokens):
    """Talk to MODEL (a base, a run, a stage's adapter or an exported model) in the terminal, through its chat
    template; the answer streams as it is generated. /reset starts over, /exit (or Ctrl-D) leaves."""
    from align.chat import Chat, converse

    chat = Chat(source, system=system, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    click.echo(f"chatting with {source} (/reset starts over, /exit leaves)")

    def read(prompt: str) -> str:
        if sys.stdin.isatty():
            return input(prompt)  # line editing
        click.echo(prompt, nl=False)
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        click.echo(line, nl=False)  # piped input shows in the transcript
        return line

    converse(chat, read, lambda text: click.echo(text, nl=False))


# every other registered stage but the evaluation (its own options, below) is one plain command
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
def eval_(models, reward_dir, prompts, size, best_of, judge, **options):
    from align.eval.report import summary_table
    from align.eval.run import evaluate

    flags = {"reward": reward_dir, "prompts": prompts, "eval_size": size, "best_of": best_of, "judge": judge}
    overrides = [*options["overrides"], *(f"{k}={v}" for k, v in flags.items() if v is not None)]
    if models:
        overrides.append("models=" + json.dumps(parse_models(models)))  # replaces the config's models, not merged
    config = load_stage_config("eval", options["config_path"], overrides, options["out_dir"])
    if options["print_config"]:
        return print_config(config)
    metrics = evaluate(config, overwrite=options["overwrite"], resume=options["resume"],
                       allow_changes=options["allow_changes"])
    click.echo(summary_table(metrics))
    click.echo(f"report: {Path(config.out_dir) / 'report.html'}")


def parse_models(text: str) -> dict[str, str]:
    """`base=a,sft=runs/x/sft` -> {"base": "a", "sft": "runs/x/sft"}."""
    models = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise AlignError(f"--models: {item!r} is not NAME=PATH (e.g. --models base=smollm2-135m-instruct,sft=runs/x/sft)")
        models[name.strip()] = path.strip()
    return models


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


@cli.group()
def configs():
    """The shipped presets: list them, or copy one to edit."""


@configs.command("list")
def configs_list():
    """Every preset with its purpose; `--config NAME` takes one by name."""
    from align.core.presets import presets, share_root

    shown = presets()
    width = max(len(p.full_name) for p in shown)
    for preset in shown:
        click.echo(f"{preset.full_name:{width}s}  {preset.purpose}")
    click.echo(f"\n{len(shown)} presets in {share_root() / 'configs'}. A stage command takes its own by name "
               f"(align sft --config smollm2-qlora), align run a pipeline's (align run --config tiny); "
               f"accelerate's are for accelerate launch --config_file (copy one first).")


@configs.command("copy")
@click.argument("name")
@click.argument("dest", type=click.Path())
def configs_copy(name, dest):
    """Write an editable copy of preset NAME (sft/smollm2-qlora, or a name no other group has) to DEST, a file or
    a directory. Its paths to data files are made absolute, so the copy reads the same files from anywhere."""
    from align.copy_preset import copy_preset

    preset, path = copy_preset(name, dest)
    group = preset.group
    how = {"pipeline": f"align run --config {path}", "accelerate": f"accelerate launch --config_file {path} -m align ..."}
    click.echo(f"copied {preset.full_name} -> {path}; edit it, then: {how.get(group, f'align {group} --config {path}')}")


@cli.command()
def env():
    """Versions of align and its libraries, devices, memory and caches: paste it into a bug report."""
    from align.core.environment import report

    click.echo(report())


@cli.command()
@click.option("--out", "out_dir", type=click.Path(), default="runs/demo", show_default=True)
def demo(out_dir):
    """SFT -> reward model -> PPO -> evaluation on the embedded SmolLM2-135M-Instruct and the demo data."""
    from align.demo.run import run_demo

    result = run_demo(Path(out_dir), echo=click.echo)
    echo_results(result)


def main() -> None:
    cli(prog_name="align")


if __name__ == "__main__":
    main()
