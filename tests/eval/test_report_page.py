"""The report as a reader sees it: headline first, curves from before training, and a page that a
1280-px browser window shows without scrolling sideways."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from align.eval import plots, report

MODELS = ["base", "sft", "aligned", "base_best_of_3", "sft_best_of_3", "aligned_best_of_3"]
COLUMNS = ["reward_mean", "reward_mean_finished", "win_rate_vs_base", "win_rate_vs_sft", "length_matched_prompts_vs_sft",
           "reward_length_corr", "reward_mean_sampled", "kl_to_base", "judge_mean", "judge_errors", "response_length",
           "no_eos_frac", "distinct_1", "distinct_2", "rouge1", "rouge2", "rougeL", "bleu", "perplexity", "mmlu_accuracy"]


def wide_report(tmp_path: Path) -> Path:
    """A comparison as wide as the demo's (6 rows x 20 figures with intervals), a chart, long answers and paths."""
    per_row = {}
    for i, name in enumerate(MODELS):
        figures = {}
        for j, column in enumerate(COLUMNS):
            figures[column] = 0.1 * i + 0.01 * j
            figures[f"{column}_ci_low"], figures[f"{column}_ci_high"] = figures[column] - 0.05, figures[column] + 0.05
        per_row[name] = figures
    chart = plots.judge(per_row, tmp_path / "plots" / "judge.png")
    examples = [{"prompt": "What is 7 + 5? " * 8, **{n: "x" * 400 for n in MODELS}} for _ in range(3)]
    setup = [("run", "/a/very/long/path/" + "without-any-space-" * 20)]
    report.write(report.Report("Evaluation", setup, per_row, COLUMNS, [("The gold judge per model", chart)], examples),
                 tmp_path)
    return tmp_path / "report.html"


def test_the_headline_comes_first_and_the_wide_tables_scroll_in_their_own_box(tmp_path):
    page = wide_report(tmp_path).read_text()
    assert page.index("<h2>Headline</h2>") < page.index("<h2>Comparison") < page.index("<h2>Charts")
    headline = page[page.index('<table id="headline">'):page.index("</table>")]
    assert re.findall(r"<td>([a-z_]+)</td>", headline) == ["judge_mean", "reward_mean", "win_rate_vs_base",
                                                          "win_rate_vs_sft", "kl_to_base", "response_length"]
    assert '<div class="wide"><table id="comparison">' in page and '<div class="wide"><table id="examples">' in page
    md = (tmp_path / "report.md").read_text()
    assert md.index("## Headline") < md.index("## Comparison")
    # what tuning forgot: each benchmark down, the change from base beside every other model's figure
    assert "| mmlu_accuracy | 0.190 | 0.290 (+0.100) | 0.390 (+0.200) |" in md
    assert '<table id="forgetting">' in page


def test_held_out_curves_run_from_before_training_to_the_final_value(tmp_path):
    """A stage that evaluates only before and after (the demo's PPO, the reward model) draws a line from step 0."""
    records = [{"step": 1, "objective/scores": 0.1}, {"step": 2, "objective/scores": 0.4}]
    final = {"eval_before/reward_mean": -1.5, "eval/reward_mean": 0.9, "train/updates": 2}
    assert plots.held_out_series(records, final, "eval/reward_mean") == ([0, 2], [-1.5, 0.9])
    # SFT names its before-value eval/loss_before; a logged value is not repeated at the end
    records = [{"step": 5, "eval/loss": 1.2}, {"step": 10, "eval/loss": 0.5}]
    final = {"eval/loss_before": 1.6, "eval/loss": 0.5, "train/steps": 10}
    assert plots.held_out_series(records, final, "eval/loss") == ([0, 5, 10], [1.6, 1.2, 0.5])

    stage = tmp_path / "ppo"
    stage.mkdir()
    (stage / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in
                                                 [{"step": s, "objective/scores": 0.1 * s, "objective/kl": 0.2 * s}
                                                  for s in (1, 2, 3)]))
    (stage / "metrics.json").write_text(json.dumps({"eval_before/reward_mean": -1.0, "eval/reward_mean": 0.5,
                                                    "eval_before/kl": 0.0, "eval/kl": 2.0, "train/updates": 3}))
    assert plots.training_curves("ppo", stage, tmp_path / "curves.png").is_file()


def browser() -> str | None:
    found = [os.environ.get("CHROME")] + [shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")]
    return next((b for b in found if b), None)


@pytest.mark.skipif(browser() is None, reason="no Chromium here (Debian: apt-get install chromium; or set CHROME)")
def test_a_1280_px_window_shows_the_report_without_sideways_scrolling(tmp_path):
    """Headless Chromium loads the page at 1280 px and reports, from the laid-out page, how wide the document
    is and how wide the comparison table is inside its box; it also writes the screenshot."""
    page = wide_report(tmp_path)
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", (
        "<script>const box = document.getElementById('comparison').parentElement;"
        "document.body.dataset.widths = [document.documentElement.scrollWidth, box.scrollWidth, box.clientWidth].join(',');"
        "</script></body>")))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,900"]
    dom = subprocess.run([browser(), *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    page_width, table_width, box_width = map(int, re.search(r'data-widths="(\d+),(\d+),(\d+)"', dom.stdout).groups())
    assert page_width <= 1280, page_width  # no sideways scroll of the page
    assert table_width > box_width  # the table is wider than its box, and scrolls there
    shot = tmp_path / "report.png"
    subprocess.run([browser(), *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(shot.read_bytes()[16:20], "big") == 1280  # the PNG's width, from its IHDR
