"""report.md and report.html: the comparison table, the charts, side-by-side answers, conventions.

The HTML is one file (charts inlined as data URIs) so it can be mailed or attached as it is; the
Markdown links the PNGs under plots/.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from align.core import rundir
from align.eval import compare

NOTES = [
    "Means carry a percentile bootstrap 95% interval [low, high] over the prompts ({resamples} resamples).",
    "Win rate of a row against a model: per prompt 1 if the row's answer gets the higher reward, 1/2 on a tie "
    "(equal reward; identical answers always tie), 0 otherwise; averaged over prompts.",
    "kl_to_base: Σ_t log π(a_t|x,a_<t) − log π_base(a_t|x,a_<t) over each sampled answer's tokens at the sampling "
    "temperature (the k1 estimator; the greedy answers when there are no samples), averaged over answers: nats per answer.",
    "Greedy answers give every other figure; a best-of-n row takes, per prompt, the highest-reward answer of n "
    "samples.",
    "response_length counts tokens up to and including EOS; no_eos_frac is the share of answers cut at "
    "max_new_tokens. distinct-n counts whitespace n-grams over all of a row's answers.",
    "ROUGE-1/2/L are F1 (rouge_score, stemmed) and BLEU is SacreBLEU's corpus BLEU, against the prompts' references.",
    "mmlu_accuracy: the multiple-choice file through lm-evaluation-harness, the choice whose letter (' A' ... ' D') "
    "is likeliest after the question (zero-shot, MMLU's own prompt layout); bench_<task>: lm-eval's task, zero-shot, "
    "acc_norm where the task has it, else acc. perplexity: per token on the held-out general text.",
]


@dataclass
class Report:
    title: str
    setup: list[tuple[str, str]]  # (what, value) lines about the run
    per_row: dict[str, dict[str, float]]
    columns: list[str]
    charts: list[tuple[str, Path]] = field(default_factory=list)  # (caption, PNG path)
    examples: list[dict[str, str]] = field(default_factory=list)  # one dict per prompt: column -> text
    resamples: int = 1000  # behind each interval, for the notes
    reference: str = "base"  # the row the forgetting table measures changes from

    @property
    def notes(self) -> list[str]:
        return [note.format(resamples=self.resamples) for note in NOTES]


def number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3f}"


def cell(figures: dict[str, float], metric: str) -> str:
    """`0.512 [0.401, 0.622]` for a mean with an interval, `0.512` for a figure, `—` when absent."""
    if metric not in figures:
        return "—"
    text = number(figures[metric])
    if f"{metric}_ci_low" in figures:
        text += f" [{number(figures[f'{metric}_ci_low'])}, {number(figures[f'{metric}_ci_high'])}]"
    return text


def text_table(per_row: dict[str, dict[str, float]], columns: list[str]) -> str:
    """Metrics down, rows across (fits a terminal with a handful of models), means only."""
    names = list(per_row)
    body = [[metric] + [number(per_row[n].get(metric)) for n in names] for metric in columns]
    header = ["metric"] + names
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header] + body]
    return "\n".join(lines)


def summary_table(metrics: dict[str, float]) -> str:
    """The comparison as text, from the flat figures `evaluate` returns (what `align eval` prints)."""
    per_row = compare.unflat(metrics)
    return text_table(per_row, compare.headline_metrics(per_row))


# the figures a reader looks for first, in this order, where the evaluation has them: the gold judge when one is
# given (the reward model is what training optimised, the judge is not), then the reward model's view, the cost
HEADLINE = ("judge_mean", "reward_mean", "win_rate_vs_", "kl_to_base", "response_length")


def headline_columns(columns: list[str]) -> list[str]:
    return [c for prefix in HEADLINE for c in columns if c == prefix or (prefix.endswith("_") and c.startswith(prefix))]


def headline_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Metrics down, the models across (best-of-n rows are in the full table): the header, then one row per figure."""
    names = [n for n in report.per_row if not compare.BEST_OF.search(n)]
    rows = [[metric] + [number(report.per_row[n].get(metric)) for n in names] for metric in headline_columns(report.columns)]
    return ["metric", *names], rows


def forgetting_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Each benchmark (lm-eval's, the multiple-choice file, perplexity on general text) down, models across:
    the figure and its change from the reference model, the measure of what tuning forgot."""
    names = [n for n in report.per_row if any(m in report.per_row[n] for m in report.columns if _is_benchmark(m))]
    ref = report.per_row.get(report.reference, {})
    rows = []
    for metric in (m for m in report.columns if _is_benchmark(m)):
        cells = []
        for name in names:
            value, before = report.per_row[name].get(metric), ref.get(metric)
            change = f" ({value - before:+.3f})" if value is not None and before is not None and name != report.reference else ""
            cells.append(number(value) + change)
        rows.append([metric.removeprefix("bench_"), *cells])
    return ["benchmark", *names], rows


def per_task_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """For prompts that name their task: each task's headline figures (`<metric>@<task>`), models across."""
    names, sep = list(report.per_row), compare.TASK_SEP
    figures = {m for f in report.per_row.values() for m in f if sep in m and not m.endswith(("_ci_low", "_ci_high"))}
    rows = []
    for task in sorted({m.split(sep, 1)[1] for m in figures}):
        for metric in headline_columns(sorted({m.split(sep, 1)[0] for m in figures if m.endswith(f"{sep}{task}")})):
            rows.append([task, metric, *(cell(report.per_row[n], f"{metric}{sep}{task}") for n in names)])
    return ["task", "metric", *names], rows


def _is_benchmark(metric: str) -> bool:
    return metric.startswith("bench_") or metric in ("mmlu_accuracy", "perplexity")


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def markdown(report: Report, out_dir: Path) -> str:
    lines = [f"# {report.title}", ""]
    header, rows = headline_rows(report)
    if rows:
        lines += ["## Headline", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    lines += [f"- {what}: {_md_escape(value)}" for what, value in report.setup] + ["", "## Comparison", ""]
    lines.append("| model | " + " | ".join(report.columns) + " |")
    lines.append("|---" * (len(report.columns) + 1) + "|")
    for name, figures in report.per_row.items():
        lines.append(f"| {name} | " + " | ".join(cell(figures, m) for m in report.columns) + " |")
    header, rows = forgetting_rows(report)
    if rows:
        lines += ["", f"## Forgetting: benchmarks (change from {report.reference})", "",
                  "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    header, rows = per_task_rows(report)
    if rows:
        lines += ["", "## Per task", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "## Charts", ""]
    for caption, path in report.charts:
        lines += [f"**{caption}**", "", f"![{caption}]({path.relative_to(out_dir).as_posix()})", ""]
    if report.examples:
        keys = list(report.examples[0])
        lines += ["## Answers side by side", "", "| " + " | ".join(keys) + " |", "|---" * len(keys) + "|"]
        lines += ["| " + " | ".join(_md_escape(ex.get(k, "")) for k in keys) + " |" for ex in report.examples]
        lines.append("")
    lines += ["## How to read it", ""] + [f"- {n}" for n in report.notes] + [""]
    return "\n".join(lines)


# a wide table scrolls inside its own box (.wide), never the page; long paths and answers wrap
STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:80em;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;vertical-align:top}
th{background:#f3f3f3;white-space:nowrap;overflow-wrap:normal}td.num{text-align:right;white-space:nowrap;overflow-wrap:normal}
img{max-width:100%;margin:.5em 0}.wide{overflow-x:auto;max-width:100%}
td:first-child{white-space:nowrap;overflow-wrap:normal}#examples td:first-child{white-space:normal;min-width:12em}
.wide td:first-child,.wide th:first-child{position:sticky;left:0;background:#fff}.wide th:first-child{background:#f3f3f3}
#headline td.num{font-size:1.15em}figure{margin:1em 0}"""


def _html_table(table_id: str, header: list[str], rows: list[list[str]], numeric_from: int) -> str:
    esc = html.escape
    out = [f'<table id="{table_id}">', "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>",
           "<tbody>"]
    for row in rows:
        cells = "".join(f'<td class="num">{esc(c)}</td>' if i >= numeric_from else f"<td>{esc(c)}</td>"
                        for i, c in enumerate(row))
        out.append(f"<tr>{cells}</tr>")
    return "\n".join(out + ["</tbody>", "</table>"])


def to_html(report: Report) -> str:
    esc = html.escape
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(report.title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{esc(report.title)}</h1>"]
    header, rows = headline_rows(report)
    if rows:
        parts += ["<h2>Headline</h2>", f'<div class="wide">{_html_table("headline", header, rows, numeric_from=1)}</div>']
    parts += ["<ul>"] + [f"<li>{esc(what)}: {esc(value)}</li>" for what, value in report.setup] + ["</ul>"]
    parts.append("<h2>Comparison: every figure, with 95% intervals</h2>")
    rows = [[name] + [cell(figures, m) for m in report.columns] for name, figures in report.per_row.items()]
    parts.append(f'<div class="wide">{_html_table("comparison", ["model"] + report.columns, rows, numeric_from=1)}</div>')
    header, rows = forgetting_rows(report)
    if rows:
        parts += [f"<h2>Forgetting: benchmarks (change from {esc(report.reference)})</h2>",
                  f'<div class="wide">{_html_table("forgetting", header, rows, numeric_from=1)}</div>']
    header, rows = per_task_rows(report)
    if rows:
        parts += ["<h2>Per task</h2>", f'<div class="wide">{_html_table("per-task", header, rows, numeric_from=2)}</div>']
    parts.append("<h2>Charts</h2>")
    for caption, path in report.charts:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{esc(caption)}</figcaption></figure>")
    if report.examples:
        keys = list(report.examples[0])
        parts += ["<h2>Answers side by side</h2>",
                  '<div class="wide">' + _html_table("examples", keys, [[ex.get(k, "") for k in keys] for ex in report.examples],
                                                     numeric_from=len(keys)) + "</div>"]
    parts += ["<h2>How to read it</h2>", "<ul>"] + [f"<li>{esc(n)}</li>" for n in report.notes] + ["</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write(report: Report, out_dir: Path) -> tuple[Path, Path]:
    md, page = out_dir / "report.md", out_dir / "report.html"
    rundir.write_text_atomic(md, markdown(report, out_dir))
    rundir.write_text_atomic(page, to_html(report))
    return md, page
