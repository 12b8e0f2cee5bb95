"""Standard benchmarks through lm-evaluation-harness (align/eval/harness.py) in an evaluation run."""

from __future__ import annotations

from pathlib import Path

import pytest

from align.core.errors import ConfigError


def test_benchmarks_name_lm_eval_tasks_and_one_that_cannot_load_here_is_left_out_in_one_line(
        eval_dirs, heldout, tmp_path, monkeypatch, caplog):
    """Offline and uncached (HF_HUB_OFFLINE), hellaswag cannot load: one line, and the evaluation finishes."""
    from align.core.config import load_config
    from align.eval.config import EvalConfig
    from align.eval.run import evaluate
    from tests.conftest import DEMO

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    common = [f"models={{base: {eval_dirs['base']}}}", f"prompts={heldout}", "eval_size=2", "bootstrap_samples=100",
              "generation.max_new_tokens=4", "generation.samples_per_prompt=0", "tracking.wandb=false"]
    with pytest.raises(ConfigError, match=r"benchmarks: 'helaswag' is not an lm-eval task \(did you mean 'hellaswag'"):
        evaluate(load_config(EvalConfig, None, [*common, f"out_dir={tmp_path / 'a'}", "benchmarks=[helaswag]"]))
    config = load_config(EvalConfig, None, [*common, f"out_dir={tmp_path / 'b'}", "benchmarks=[hellaswag]",
                                            f"mmlu={DEMO / 'multiple_choice.csv'}", "mmlu_size=8"])
    metrics = evaluate(config)
    assert "base/mmlu_accuracy" in metrics and not any("hellaswag" in k for k in metrics)
    said = [r.getMessage() for r in caplog.records if "hellaswag" in r.getMessage()]
    assert len(said) == 1 and "unavailable here" in said[0] and "\n" not in said[0]
    assert "benchmark hellaswag: unavailable" in Path(config.out_dir, "report.md").read_text()


def test_lm_evals_git_lookup_prints_nothing_outside_a_checkout(tmp_path, monkeypatch, capfd):
    """lm-eval runs `git describe` for its record; outside a repository git says "fatal: not a git repository"
    on the process's stderr, which a user would read as align failing."""
    import subprocess

    from align.eval.harness import quiet

    monkeypatch.chdir(tmp_path)
    with quiet():
        subprocess.run(["git", "describe", "--always"], check=False)
    assert "fatal" not in capfd.readouterr().err


def test_a_task_folder_of_the_users_runs_as_a_benchmark(eval_dirs, heldout, tmp_path):
    """`benchmark_tasks`: lm-eval task YAMLs of the user's own (here one on a local JSONL copy of its data)."""
    from align.core.config import load_config
    from align.eval import harness
    from align.eval.benchmarks import Question
    from align.eval.config import EvalConfig
    from align.eval.run import evaluate

    folder = harness.write_local_task([Question("Q?", ("a", "b", "c", "d"), 0, "x")] * 3, tmp_path / "mine")
    (folder / f"{harness.LOCAL_TASK}.yaml").rename(folder / "my_mc.yaml")
    text = (folder / "my_mc.yaml").read_text().replace(f"task: {harness.LOCAL_TASK}", "task: my_mc")
    (folder / "my_mc.yaml").write_text(text)
    config = load_config(EvalConfig, None, [
        f"out_dir={tmp_path / 'eval'}", f"models={{base: {eval_dirs['base']}, sft: {eval_dirs['sft']}}}",
        f"prompts={heldout}", "eval_size=2", "bootstrap_samples=100", "generation.max_new_tokens=4",
        "generation.samples_per_prompt=0", "tracking.wandb=false", "benchmarks=[my_mc]", f"benchmark_tasks={folder}"])
    metrics = evaluate(config)
    assert {"base/bench_my_mc", "sft/bench_my_mc"} <= set(metrics)
    assert metrics["base/bench_my_mc"] in (0.0, 1.0)  # three copies of one question: all right or all wrong
    assert "| my_mc |" in Path(config.out_dir, "report.md").read_text()  # the forgetting table
