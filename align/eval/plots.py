"""PNG charts for the report (matplotlib, Agg: no display needed): the comparison, and the training
curves of the stages that made the models, read from their metrics.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from align.core import rundir

PLOTS = "plots"
# stage -> panels, each (title, y-axis label, [(metrics.jsonl key, label)])
CURVES = {
    "sft": [("SFT loss", "loss (nats per token)", [("train/loss", "train"), ("eval/loss", "held-out")])],
    "reward": [("reward model pair accuracy", "pair accuracy",
                [("train/accuracy", "train"), ("eval/accuracy", "held-out")])],
    "ppo": [("PPO reward", "normalised reward", [("objective/scores", "rollout score"), ("eval/reward_mean", "held-out greedy"),
                                                 ("eval/reward_mean_sampled", "held-out sampled")]),
            ("PPO KL to the reference", "KL (nats per answer)", [("objective/kl", "rollout"), ("eval/kl", "held-out greedy")])],
    # TRL's log names, as transformers' callback mirrors them into metrics.jsonl
    "dpo": [("DPO loss", "loss", [("train/loss", "train"), ("eval/loss", "held-out")]),
            ("DPO reward accuracy", "implicit-reward accuracy",
             [("train/rewards/accuracies", "train"), ("eval/rewards/accuracies", "held-out")])],
    "grpo": [("GRPO reward", "reward", [("train/reward", "train")]), ("GRPO KL", "KL", [("train/kl", "train")])],
    "rloo": [("RLOO reward", "reward", [("train/reward", "train")]), ("RLOO KL", "KL", [("train/kl", "train")])],
}
# a stage without panels of its own: its loss, as transformers' callback logs it for every TRL trainer
LOSS_PANEL = [("training loss", "loss", [("train/loss", "train"), ("eval/loss", "held-out")])]
X_LABEL = {"ppo": "PPO update"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def reward_distribution(rewards: dict[str, list[float]], path: Path) -> Path:
    plt = _pyplot()
    names = list(rewards)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(names) + 2), 4))
    ax.boxplot([rewards[n] for n in names], showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20, ha="right")
    ax.set_ylabel("normalised reward")
    ax.set_title("reward per answer (greedy; best-of-n: chosen sample)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def win_rates(per_row: dict[str, dict[str, float]], opponents: list[str], path: Path) -> Path:
    plt = _pyplot()
    names = list(per_row)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(names) + 2), 4))
    width = 0.8 / max(1, len(opponents))
    for k, other in enumerate(opponents):
        key = f"win_rate_vs_{other}"
        xs, ys, errs = [], [], [[], []]
        for i, name in enumerate(names):
            figures = per_row[name]
            if key in figures:
                xs.append(i + k * width)
                ys.append(figures[key])
                errs[0].append(figures[key] - figures[f"{key}_ci_low"])
                errs[1].append(figures[f"{key}_ci_high"] - figures[key])
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=f"vs {other}")
    ax.axhline(0.5, color="grey", lw=1, ls="--")
    ax.set_xticks([i + width * (len(opponents) - 1) / 2 for i in range(len(names))], names, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("win rate (ties count 1/2)")
    ax.set_title("pairwise win rate under the reward model, 95% CI")
    ax.legend()
    return _save(fig, path)


def reward_vs_kl(per_row: dict[str, dict[str, float]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, f in per_row.items():
        if "kl_to_base" not in f or "reward_mean" not in f:
            continue
        ax.errorbar(f["kl_to_base"], f["reward_mean"], fmt="o", capsize=3,
                    xerr=[[f["kl_to_base"] - f["kl_to_base_ci_low"]], [f["kl_to_base_ci_high"] - f["kl_to_base"]]],
                    yerr=[[f["reward_mean"] - f["reward_mean_ci_low"]], [f["reward_mean_ci_high"] - f["reward_mean"]]])
        ax.annotate(name, (f["kl_to_base"], f["reward_mean"]), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("KL to the base (nats per answer, sampled answers)")
    ax.set_ylabel("mean normalised reward (greedy)")
    ax.set_title("reward against KL, 95% CI")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def reward_vs_length(points: dict[str, tuple[list[float], list[float]]], path: Path) -> Path:
    """Each model's answers as (length, reward) points, with Pearson's r in the legend."""
    from align.eval.scores import pearson

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (lengths, rewards) in points.items():
        r = pearson(rewards, lengths)
        ax.scatter(lengths, rewards, s=12, alpha=0.6, label=f"{name} (r = {'n/a' if r != r else f'{r:.2f}'})")
    ax.set_xlabel("answer length (tokens, greedy)")
    ax.set_ylabel("normalised reward")
    ax.set_title("reward against length: a slope is length, not quality")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def read_log(stage_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(stage_dir) / rundir.METRICS_LOG
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write
    return records


def read_final(stage_dir: str | Path) -> dict[str, Any]:
    """A stage's metrics.json; empty when it has none (yet) or it cannot be read."""
    try:
        return json.loads((Path(stage_dir) / rundir.METRICS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one logged figure, skipping records without it or with a non-finite value."""
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            steps.append(r.get("step", len(steps)))
            values.append(float(v))
    return steps, values


def held_out_series(records: list[dict[str, Any]], final: dict[str, Any], key: str) -> tuple[list[float], list[float]]:
    """A held-out figure's (steps, values), from its value before training at step 0 (`eval_before/x` or
    `eval/x_before` in the stage's metrics.json) to its final value at the last step: a stage that evaluates
    only before and after draws a line, not one dot."""
    steps, values = series(records, key)
    name = key.split("/", 1)[1]
    before = next((final[k] for k in (f"eval_before/{name}", f"{key}_before") if _finite(final.get(k))), None)
    if before is not None and (not steps or steps[0] > 0):
        steps, values = [0, *steps], [before, *values]
    last = max([r["step"] for r in records if isinstance(r.get("step"), (int, float))] +
               [final[k] for k in ("train/steps", "train/updates") if _finite(final.get(k))], default=None)
    if _finite(final.get(key)) and last and (not steps or steps[-1] < last):
        steps, values = [*steps, last], [*values, float(final[key])]
    return steps, values


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def training_curves(stage: str, stage_dir: str | Path, path: Path) -> Path | None:
    """The stage's curves as one PNG; None when its log holds none of the figures."""
    plt = _pyplot()
    records = read_log(stage_dir)
    final = read_final(stage_dir)
    panels = []
    for title, y_label, lines in CURVES.get(stage, LOSS_PANEL):
        drawn = [(label, *(held_out_series(records, final, key) if key.startswith("eval/") else series(records, key)))
                 for key, label in lines]
        drawn = [line for line in drawn if line[1]]
        if drawn:
            panels.append((title, y_label, drawn))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
    for ax, (title, y_label, lines) in zip(axes[0], panels):
        for label, steps, values in lines:
            ax.plot(steps, values, marker="o" if len(steps) < 12 else None, ms=3, label=label)
        ax.set_title(f"{title} ({Path(stage_dir).name})")
        ax.set_xlabel(f"{X_LABEL.get(stage, 'optimiser step')} (0: before training)")
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def overoptimisation(runs: dict[str, str | Path], path: Path) -> Path | None:
    """Gold judge and proxy reward of PPO's held-out greedy answers against their KL to the reference, one line
    per run, from each run's in-loop evaluations (before training at KL 0, every eval_steps, and the last; PPO's
    data.eval_judge gives the gold): the over-optimisation curve of Gao et al. 2022. None when no run has both."""
    read = {name: kl_points(directory) for name, directory in runs.items()}
    lines = {name: points for name, points in read.items() if any(_finite(p[1]) for p in points)}
    if not lines:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, column, y_label in ((axes[0], 1, "gold judge (mean, greedy)"), (axes[1], 2, "proxy reward (normalised)")):
        for name, points in lines.items():
            xs = [p[0] for p in points if _finite(p[column])]
            ax.plot(xs, [p[column] for p in points if _finite(p[column])], marker="o", ms=3, label=name)
        ax.set_xlabel("KL to the reference (nats per answer, held-out greedy)")
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("gold judge against KL")
    axes[1].set_title("proxy reward (each run's own objective) against KL")
    return _save(fig, path)


def kl_points(ppo_dir: str | Path) -> list[tuple[float, Any, Any]]:
    """(KL, gold judge, proxy reward) of a PPO run's held-out evaluations, by KL: before training
    (metrics.json's eval_before/*) and each in-loop evaluation (metrics.jsonl's eval/*)."""
    final = read_final(ppo_dir)
    points = [(float(r["eval/kl"]), r.get("eval/judge_mean"), r.get("eval/reward_mean")) for r in read_log(ppo_dir)
              if _finite(r.get("eval/kl"))]
    before = [final.get(f"eval_before/{k}") for k in ("kl", "judge_mean", "reward_mean")]
    if _finite(before[0]):
        points.append((float(before[0]), before[1], before[2]))
    return sorted(points, key=lambda p: p[0])


def judge(per_row: dict[str, dict[str, float]], path: Path) -> Path:
    """The gold judge's mean score per row, with its 95% interval."""
    plt = _pyplot()
    names = [n for n in per_row if "judge_mean" in per_row[n]]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(names) + 2), 4))
    means = [per_row[n]["judge_mean"] for n in names]
    errs = [[m - per_row[n].get("judge_mean_ci_low", m) for n, m in zip(names, means)],
            [per_row[n].get("judge_mean_ci_high", m) - m for n, m in zip(names, means)]]
    ax.bar(range(len(names)), means, yerr=errs, capsize=3, color="#4c72b0")
    for i, m in enumerate(means):
        ax.annotate(f"{m:.2f}", (i, m), textcoords="offset points", xytext=(0, 4), ha="center")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("gold judge, mean score per answer")
    ax.set_title("the gold judge (independent of the reward model), 95% CI")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
