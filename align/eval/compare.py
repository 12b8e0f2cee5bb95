"""The comparison: one row per model (and per best-of-n variant), its figures as `<row>/<metric>`.

A row's answers are one per prompt: the greedy answer for a model, the highest-reward sampled answer
for a best-of-n row. Means carry `_ci_low`/`_ci_high` (bootstrap 95%, see scores.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from align.eval import scores, text_metrics
from align.eval.config import META
from align.eval.generate import Answer


@dataclass
class Row:
    name: str  # `<model>` or `<model>_best_of_<n>`
    model: str  # the model whose answers these are
    answers: list[Answer]  # (P,) one per prompt
    rewards: list[float] | None = None  # (P,) normalised reward of each answer; None without a reward model
    judged: list[float | None] | None = None  # (P,) judge score, None where the judge raised
    extra: dict[str, float] = field(default_factory=dict)  # figures only a model row has (KL, perplexity, ...)

    @property
    def texts(self) -> list[str]:
        return [a.text for a in self.answers]


BEST_OF = re.compile(r"_best_of_\d+$")


def best_of_name(model: str, n: int) -> str:
    return f"{model}_best_of_{n}"


def row_metrics(row: Row, rows: dict[str, Row], compare_to: list[str], references: list[str | None],
                boot: dict[str, int], metrics: Sequence[str] = ("rouge", "bleu")) -> dict[str, float]:
    """Every figure of one row; `rows` holds the rows it is compared with (by name); `metrics` the text
    metrics against the references (align.eval.text_metrics)."""
    out: dict[str, float] = {}
    out.update(scores.with_ci("response_length", [float(len(a.token_ids)) for a in row.answers], **boot))
    out["no_eos_frac"] = scores.mean([0.0 if a.has_eos else 1.0 for a in row.answers])
    out["distinct_1"] = scores.distinct_n(row.texts, 1)
    out["distinct_2"] = scores.distinct_n(row.texts, 2)
    if row.rewards is not None:
        out.update(scores.with_ci("reward_mean", row.rewards, **boot))
        # answers cut at the length cap are outside what a reward model trained on finished replies has seen
        # (on HH-RLHF it scored them 1.8 against 0.6-0.8 for finished ones): the finished ones' mean apart
        finished = [r for r, a in zip(row.rewards, row.answers) if a.has_eos]
        if finished:
            out["reward_mean_finished"] = scores.mean(finished)
        out["reward_length_corr"] = scores.pearson(row.rewards, lengths(row))
        for other in compare_to:
            if other in rows and other != row.name and rows[other].rewards is not None:
                outcomes = scores.win_outcomes(row.rewards, rows[other].rewards)
                out.update(scores.with_ci(f"win_rate_vs_{other}", outcomes, **boot))
                out.update(length_matched_win_rate(row, rows[other], other, boot))
    pairs = [(a.text, ref) for a, ref in zip(row.answers, references) if ref is not None]
    if pairs:
        predictions, refs = [p for p, _ in pairs], [r for _, r in pairs]
        for name, value in text_metrics.compute(metrics, predictions, refs).items():
            out.update(scores.with_ci(name, value, **boot) if isinstance(value, list) else {name: value})
    if row.judged is not None:
        ok = [j for j in row.judged if j is not None]
        out.update(scores.with_ci("judge_mean", ok, **boot))
        out["judge_errors"] = float(len(row.judged) - len(ok))
    out.update(row.extra)
    return out


LENGTH_TOLERANCE = 0.2  # answers within 20% of each other's length count as like length


def lengths(row: Row) -> list[float]:
    return [float(len(a.token_ids)) for a in row.answers]


def length_matched_win_rate(row: Row, other: Row, name: str, boot: dict[str, int]) -> dict[str, float]:
    """The win rate over the prompts whose two answers are of like length, and how many they are:
    a win rate that falls here was bought with length (reward hacking's most common form)."""
    matched = scores.length_matched(lengths(row), lengths(other), LENGTH_TOLERANCE)
    outcomes = scores.win_outcomes([row.rewards[i] for i in matched], [other.rewards[i] for i in matched])
    return {**scores.with_ci(f"win_rate_vs_{name}_length_matched", outcomes, **boot),
            f"length_matched_prompts_vs_{name}": float(len(matched))}


TASK_SEP = "@"  # `reward_mean@add`: a figure over one task's prompts


def task_rows(rows: list[Row], tasks: list[str | None], kl: dict[str, list[float]], boot: dict[str, int]
              ) -> dict[str, tuple[list[int], list[Row]]]:
    """task -> (its prompts' indices, the rows cut to those prompts), for prompts that name their task (`task`
    field). Of the model-level figures only kl_to_base is kept (it is per prompt, `kl`); perplexity and
    benchmarks are not."""
    out = {}
    for task in sorted({t for t in tasks if t is not None}):
        keep = [i for i, t in enumerate(tasks) if t == task]
        out[task] = keep, [Row(row.name, row.model, [row.answers[i] for i in keep],
                               [row.rewards[i] for i in keep] if row.rewards is not None else None,
                               [row.judged[i] for i in keep] if row.judged is not None else None,
                               scores.with_ci("kl_to_base", [kl[row.name][i] for i in keep], **boot)
                               if row.name in kl else {})
                           for row in rows]
    return out


def flat(per_row: dict[str, dict[str, float]]) -> dict[str, float]:
    """{row: {metric: v}} -> {"row/metric": v}, with NaN kept out (JSON has none)."""
    return {f"{row}/{metric}": value for row, figures in per_row.items() for metric, value in figures.items()
            if not (isinstance(value, float) and math.isnan(value))}


def unflat(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """{"row/metric": v} -> {row: {metric: v}}, leaving out the evaluation's own `eval/` figures; model
    rows before best-of-n rows (metrics.json sorts its keys, which would interleave them)."""
    per_row: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        row, sep, metric = key.partition("/")
        if sep and row != META:
            per_row.setdefault(row, {})[metric] = value
    order = sorted(per_row, key=lambda row: BEST_OF.search(row) is not None)  # stable: keeps the order within each
    return {row: per_row[row] for row in order}


def headline_metrics(per_row: dict[str, dict[str, float]]) -> list[str]:
    """The table's columns: every metric some row has, CI bounds folded into their mean, in a fixed order."""
    order = ["reward_mean", "reward_mean_finished", "win_rate_vs_", "length_matched_prompts_vs_", "reward_length_corr", "reward_mean_sampled",
             "kl_to_base", "judge_mean", "judge_errors",
             "response_length", "no_eos_frac", "distinct_1", "distinct_2", "rouge1", "rouge2", "rougeL", "bleu",
             "perplexity", "mmlu_accuracy"]
    names = {m for figures in per_row.values() for m in figures
             if not m.endswith(("_ci_low", "_ci_high")) and TASK_SEP not in m}

    def rank(metric: str) -> tuple[int, str]:
        for i, prefix in enumerate(order):
            if metric == prefix or (prefix.endswith("_") and metric.startswith(prefix)):
                return i, metric
        return len(order), metric

    return sorted(names, key=rank)
