"""The commands around the stages: `align configs`, `align env`, `align export`, `align chat`."""

from __future__ import annotations

import sys

import click

from align.cli.app import cli


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
