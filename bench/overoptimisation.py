"""Reward over-optimisation on the demo: PPO against one reward model and against an ensemble of them, with
the same seed and budget (issue #25).

    .venv/bin/python -m bench.overoptimisation [--members 4] [--objective uwo] [--uwo-lambda 1.0]
                                               [--eval-steps 2] [--workdir runs/overoptimisation]

Each step is an `align` command as a user runs it, on the demo presets with their paths pointed into
--workdir (a step whose output is already finished there is kept):

    sft        align sft    --config smollm2-demo
    reward     align reward --config smollm2-demo                                  (one reward model)
    ensemble   align reward --config smollm2-demo --set training.ensemble=K        (K members, seeds 42..)
    ppo_single align ppo    --config smollm2-demo  against reward/
    ppo_ens    align ppo    --config smollm2-demo  against ensemble/, reward.ensemble_objective=OBJ
    eval       align eval   --config smollm2-demo  base, sft and both PPO policies, scored by the single
                            reward model, with --ppo-runs drawing both runs' gold and proxy against KL

Both PPO runs evaluate every --eval-steps updates with the demo's gold judge (data.eval_judge). Written to
bench/results/overoptimisation.json: per PPO run its (KL, gold, proxy) points, final figures, seconds and peak
RSS (the ensemble's extra memory over one reward model on the shared base), and the eval report's path.
About 35 minutes on the 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import common


def align(*args: str) -> float:
    """Run one align command (its output passed through); its wall seconds."""
    started = time.perf_counter()
    print("$ align " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "align", *args], check=True, cwd=common.ROOT,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"})
    return round(time.perf_counter() - started, 1)


def finished(directory: Path) -> bool:
    status = directory / "status.json"
    return status.is_file() and json.loads(status.read_text()).get("state") == "done"


def stage(name: str, out: Path, *sets: str) -> float | None:
    """`align <name> --config smollm2-demo --out OUT --set ...`, unless OUT already holds a finished run."""
    if finished(out):
        return None
    return align(name, "--config", "smollm2-demo", "--out", str(out), "--overwrite",
                 *[part for s in sets for part in ("--set", s)])


def ppo_figures(directory: Path) -> dict[str, Any]:
    import statistics

    from align.eval.plots import kl_points, read_log

    final = json.loads((directory / "metrics.json").read_text())
    keep = ("eval/judge_mean", "eval/reward_mean", "eval/kl", "eval/response_length", "eval_before/judge_mean",
            "eval_before/reward_mean", "memory/peak_rss_mb", "train/updates")
    updates = [r for r in read_log(directory) if "time/update_s" in r]
    return {"points": [{"kl": k, "judge": j, "proxy": r} for k, j, r in kl_points(directory)],
            "final": {k: final.get(k) for k in keep},
            "median_update_s": statistics.median(r["time/update_s"] for r in updates),
            "median_scoring_s": statistics.median(r["time/scoring_s"] for r in updates),
            "reward_disagreement": [r.get("objective/reward_disagreement") for r in updates]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--objective", choices=["mean", "uwo", "wco"], default="uwo")
    parser.add_argument("--uwo-lambda", type=float, default=1.0)
    parser.add_argument("--eval-steps", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=common.ROOT / "runs" / "overoptimisation")
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    w = args.workdir.resolve()
    machine = common.machine()
    seconds = {
        "sft": stage("sft", w / "sft"),
        "reward": stage("reward", w / "reward", f"model.adapter={w / 'sft' / 'adapter'}"),
        "ensemble": stage("reward", w / "ensemble", f"model.adapter={w / 'sft' / 'adapter'}",
                          f"training.ensemble={args.members}"),
    }
    ppo_sets = [f"model.adapter={w / 'sft' / 'adapter'}", f"training.eval_steps={args.eval_steps}"]
    seconds["ppo_single"] = stage("ppo", w / "ppo_single", *ppo_sets, f"reward.model={w / 'reward'}")
    seconds["ppo_ensemble"] = stage("ppo", w / "ppo_ensemble", *ppo_sets, f"reward.model={w / 'ensemble'}",
                                    f"reward.ensemble_objective={args.objective}", f"reward.uwo_lambda={args.uwo_lambda}")
    models = {"base": "smollm2-135m-instruct", "sft": str(w / "sft"), "single": str(w / "ppo_single"),
              "ensemble": str(w / "ppo_ensemble")}
    seconds["eval"] = stage("eval", w / "eval", "models=" + json.dumps(models), f"reward={w / 'reward'}",
                            "few_shot=0", "stages=" + json.dumps({"sft": str(w / "sft"), "reward": str(w / "reward"),
                                                     "ppo": str(w / "ppo_single")}),
                            "ppo_runs=" + json.dumps({"single": str(w / "ppo_single"),
                                                      "ensemble": str(w / "ppo_ensemble")}))
    runs = {name: ppo_figures(w / f"ppo_{name}") for name in ("single", "ensemble")}
    ensemble_reward = json.loads((w / "ensemble" / "metrics.json").read_text())
    single_reward = json.loads((w / "reward" / "metrics.json").read_text())
    evaluation = json.loads((w / "eval" / "metrics.json").read_text())
    peak = {name: runs[name]["final"]["memory/peak_rss_mb"] for name in runs}
    body = {
        "benchmark": "overoptimisation", "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
        "settings": {"members": args.members, "objective": args.objective, "uwo_lambda": args.uwo_lambda,
                     "eval_steps": args.eval_steps, "workdir": str(w)},
        "seconds": seconds,
        "seconds_note": "wall seconds of each align command; null: finished in the workdir by an earlier invocation",
        "reward_models": {"single_peak_rss_mb": single_reward.get("memory/peak_rss_mb"),
                          "ensemble_peak_rss_mb": ensemble_reward.get("memory/peak_rss_mb"),
                          "single_train_runtime_s": single_reward.get("train/runtime_s"),
                          "members_train_runtime_s": [ensemble_reward.get(f"member{k}/train/runtime_s")
                                                      for k in range(args.members)],
                          "single_eval_accuracy": single_reward.get("eval/accuracy"),
                          "ensemble_eval_accuracy": ensemble_reward.get("eval/accuracy"),
                          "ensemble_disagreement": ensemble_reward.get("eval/disagreement"),
                          "members_eval_accuracy": [ensemble_reward.get(f"member{k}/eval/accuracy")
                                                    for k in range(args.members)]},
        "ppo": runs,
        "ensemble_extra_peak_rss": {"mb": round(peak["ensemble"] - peak["single"], 1),
                                    "share_of_single_ppo_peak": round((peak["ensemble"] - peak["single"]) / peak["single"], 4)},
        "eval": {k: v for k, v in evaluation.items() if k.split("/")[0] in ("single", "ensemble", "sft", "base")
                 and k.split("/")[-1] in ("judge_mean", "reward_mean", "kl_to_base", "response_length",
                                          "win_rate_vs_sft", "win_rate_vs_sft_length_matched")},
        "report": str(w / "eval" / "report.html"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overoptimisation.json").write_text(json.dumps(body, indent=2) + "\n")
    print(json.dumps({k: body[k] for k in ("seconds", "reward_models", "ensemble_extra_peak_rss")}, indent=1))


if __name__ == "__main__":
    main()
