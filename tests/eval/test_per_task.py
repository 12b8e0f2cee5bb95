"""Held-out prompts that name their task (multi-task fine-tuning) get every per-prompt figure per task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import DEMO


def test_every_per_prompt_figure_is_also_given_per_task(eval_dirs, write_jsonl, tmp_path):
    from align.core.config import load_config
    from align.eval.config import EvalConfig
    from align.eval.run import evaluate

    rows = [json.loads(line) for line in (DEMO / "heldout.jsonl").read_text().splitlines()[:8]]
    prompts = write_jsonl("heldout.jsonl", rows)
    config = load_config(EvalConfig, None, [
        f"out_dir={tmp_path / 'eval'}", f"models={{base: {eval_dirs['base']}, sft: {eval_dirs['sft']}}}",
        f"reward={eval_dirs['reward']}", f"prompts={prompts}", "generation.max_new_tokens=5",
        "generation.samples_per_prompt=0", "bootstrap_samples=100", "judge=align.demo.tasks:judge", "tracking.wandb=false"])
    metrics = evaluate(config)
    written = [json.loads(line) for line in Path(config.out_dir, "generations.jsonl").read_text().splitlines()]
    for task in {r["task"] for r in rows}:
        mine = [w for w, r in zip(written, rows) if r["task"] == task]
        assert metrics[f"sft/reward_mean@{task}"] == pytest.approx(sum(w["answers"]["sft"]["reward"] for w in mine) / len(mine))
        assert f"sft/win_rate_vs_base@{task}" in metrics and f"sft/judge_mean@{task}" in metrics
        assert f"sft/kl_to_base@{task}" in metrics and f"base/response_length@{task}" in metrics
    assert not any("@" in k for k in metrics if k.startswith("sft/perplexity"))
    md = Path(config.out_dir, "report.md").read_text()
    assert "## Per task" in md and f"| {rows[0]['task']} | reward_mean |" in md
    comparison = md[md.index("## Comparison"):md.index("## Per task")]
    assert "@" not in comparison.splitlines()[2]  # the main table's columns stay the whole set's


def test_a_task_that_is_not_a_name_is_refused_with_its_line(write_jsonl):
    from align.core.errors import DataError
    from align.core.records import load_records

    path = write_jsonl("p.jsonl", [{"prompt": "Q?", "task": "add"}, {"prompt": "R?", "task": 3}])
    with pytest.raises(DataError, match=r'p.jsonl:2: field "task": expected a task name, got 3'):
        load_records(path, "prompts")
    assert load_records(write_jsonl("q.jsonl", [{"prompt": "Q?", "task": " add "}]), "prompts")[0].task == "add"
