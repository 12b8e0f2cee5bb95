"""Every training stage on real data at real lengths: peak memory and seconds per step (issue #20).

    .venv/bin/python -m bench.stage_memory [--stages sft,reward,...] [--steps 2] [--max-length 1024]

The HH-RLHF dev slice (../shared/data, 1156 published pairs) is prepared as `align run` prepares a
pipeline's data (align.convert.prepare: 600 training prompts). Each stage runs as a user runs it: the
shipped preset (configs/<stage>/smollm2-qlora.yaml), its data wired to the prepared files, at
`--max-length` tokens, for `--steps` steps, in a process of its own whose peak RSS is the kernel's
figure for that child (bench/common.run_child). The records it trains on are the longest of their
file (by characters), as many as the measured steps take: the peak of a whole epoch is the peak of its
longest micro-batch, so these steps reach it, and their seconds per step are the epoch's worst. Tokens
per second over those steps turn into the seconds of a typical step (the file's mean length).

The reward model trained here (2 steps) scores for PPO, GRPO and RLOO, so `reward` runs first.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench import common

DEV_SLICE = common.ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-dev.jsonl.gz"
ORDER = ("sft", "reward", "dpo", "kto", "orpo", "ppo", "grpo", "rloo")
DATA = {"sft": "sft.jsonl", "reward": "pairs.jsonl", "dpo": "pairs.jsonl", "kto": "pairs.jsonl", "orpo": "pairs.jsonl",
        "ppo": "prompts.jsonl", "grpo": "prompts.jsonl", "rloo": "prompts.jsonl"}


def overrides(stage: str, data: Path, steps: int, max_length: int, reward_dir: Path, model: str) -> list[str]:
    """The preset's settings this bench changes: data, length, steps, no checkpoints or W&B."""
    common_keys = ["tracking.wandb=false", "tracking.logging_steps=1", f"model.name={model}"]
    if stage == "sft":
        return [*common_keys, f"data.train=[{{path: {data}}}]", f"training.max_length={max_length}",
                f"training.max_steps={steps}", "training.save_steps=1000", "data.eval_fraction=0"]
    if stage == "reward":
        # the file holds steps x batch records: one epoch is the measured steps
        return [*common_keys, f"data.train={data}", f"data.max_length={max_length}", "training.save_steps=1000",
                "training.epochs=1", "data.eval_fraction=0"]
    if stage in ("dpo", "kto", "orpo"):
        return [*common_keys, f"data.train={data}", f"training.max_length={max_length}", f"training.max_steps={steps}",
                "training.save_steps=1000", "data.eval_fraction=0"]
    if stage == "ppo":
        return [*common_keys, f"data.prompts={data}", "data.eval_prompts=null", f"data.max_prompt_length={max_length}",
                f"training.updates={steps}", "training.save_steps=1000", "training.eval_steps=0", f"reward.model={reward_dir}", "model.adapter=null"]
    return [*common_keys, f"data.prompts={data}", f"training.max_steps={steps}", "training.save_steps=1000",
            f"reward.model={reward_dir}", "reward.function=null"]


def batch_size(stage: str) -> int:
    """Records one optimiser step of the preset takes (batch_size x grad_accum; PPO: prompts per rollout)."""
    import align

    config = align.stage_config(stage, str(common.ROOT / "configs" / stage / "smollm2-qlora.yaml"), [])
    return config.training.batch_size if stage == "ppo" else config.training.batch_size * config.training.grad_accum


def longest(src: Path, dst: Path, n: int) -> dict[str, float]:
    """The n longest records of src (by characters) into dst; their mean and the file's mean, in characters."""
    rows = src.read_text().splitlines()
    ranked = sorted(rows, key=len, reverse=True)
    dst.write_text("\n".join(ranked[:n]) + "\n")
    return {"chars_mean_measured": sum(map(len, ranked[:n])) / n, "chars_mean_file": sum(map(len, rows)) / len(rows)}


def child(stage: str, config_args: list[str]) -> None:
    """One stage, as `align <stage>` runs it; prints its figures and seconds per step."""
    import align
    from align.stages import STAGES

    preset = common.ROOT / "configs" / stage / "smollm2-qlora.yaml"
    config = align.stage_config(stage, str(preset), config_args)
    started = time.perf_counter()
    figures = STAGES[stage].train()(config, overwrite=True)
    wall = time.perf_counter() - started
    logged = [json.loads(line) for line in (Path(config.out_dir) / "metrics.jsonl").read_text().splitlines()]
    if stage == "ppo":
        per_step = [r["time/update_s"] for r in logged if "time/update_s" in r]
    else:
        runtime, steps = figures.get("train/runtime_s"), figures.get("train/steps")
        per_step = [runtime / steps] if runtime and steps else []
    common.report({"stage": stage, "wall_s": round(wall, 1), "steps": figures.get("train/steps", len(per_step)),
                   "sec_per_step": round(common.median(per_step), 2) if per_step else None,
                   "peak_rss_mb_logged": figures.get("memory/peak_rss_mb")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default=",".join(ORDER))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--train-prompts", type=int, default=600)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="tiny-random-llama checks the bench in a minute")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        return child(args.child, rest)

    from align.convert.prepare import PrepareSpec, prepare

    work = Path(tempfile.mkdtemp(prefix="stage_memory-"))
    prepared = prepare(PrepareSpec(source="hh-rlhf", files=[str(DEV_SLICE)], train_prompts=args.train_prompts),
                       work / "data")
    results, reward_dir = [], work / "reward"
    for stage in [s for s in ORDER if s in args.stages.split(",")]:
        batch = batch_size(stage)
        data = work / f"{stage}-{DATA[stage]}"
        lengths = longest(work / "data" / DATA[stage], data, batch * args.steps)
        config_args = [f"out_dir={work / stage}", *overrides(stage, data, args.steps, args.max_length, reward_dir, args.model)]
        try:
            result = common.run_child([common.python_main(), "-m", "bench.stage_memory", "--child", stage, *config_args],
                                      timeout=1800, env=common.as_align_runs({}))
        except RuntimeError as e:
            result = {"stage": stage, "error": [line for line in str(e).splitlines() if line.strip()][-1][:300]}
        result.update(batch=batch, **{k: round(v) for k, v in lengths.items()})
        if result.get("sec_per_step"):
            result["sec_per_step_typical"] = round(result["sec_per_step"] * lengths["chars_mean_file"]
                                                   / lengths["chars_mean_measured"], 2)
        common.emit(result)
        results.append(result)
    path = common.save("stage_memory", {"settings": vars(args), "data": prepared["records"],
                                        "versions": common.versions("torch", "transformers", "trl", "peft", "bitsandbytes"),
                                        "stages": results})
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
