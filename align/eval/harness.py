"""Standard benchmarks through lm-evaluation-harness (lm-eval): what tuning made each model forget, in numbers
that can be set beside published ones.

- `eval.benchmarks: [mmlu, hellaswag, arc_easy, ...]` are lm-eval's own tasks: their data come from wherever
  lm-eval's `datasets` finds them (the hub, or its cache). Offline and uncached, a task is reported unavailable
  in one line and the evaluation goes on without it.
- `eval.mmlu` (a multiple-choice file in MMLU's layout, the demo's own set) runs as a local lm-eval task written
  here (`align_multiple_choice`), with MMLU's zero-shot prompt: `mmlu_accuracy`.
- Each model row runs through lm-eval's `HFLM` wrapper of the loaded model (adapters included: the view's adapter
  is active), zero-shot, with per-document results kept, so each figure carries the same bootstrap interval as
  every other figure of the table.
- A soft prompt's virtual tokens (align.core.soft_prompt) and the in-context row's demonstrations are not the
  model lm-eval sees, so those rows get no benchmark figures.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from align.core.errors import ConfigError
from align.eval.benchmarks import LETTERS, MC_HEADER, Question
from align.eval.models import View

log = logging.getLogger(__name__)

LOCAL_TASK = "align_multiple_choice"
# lm-eval's own loggers: their per-task notes (default aggregations, dataset building) are not the user's business
QUIET = ("lm-eval", "lm_eval")


def metric_name(task: str) -> str:
    return "mmlu_accuracy" if task == LOCAL_TASK else f"bench_{task}"


def write_local_task(questions: list[Question], folder: Path) -> Path:
    """The multiple-choice file as an lm-eval task folder: the questions as JSONL, and the task's YAML (MMLU's
    zero-shot layout: the header, the question, the lettered choices, "Answer:", then " A" ... " D" scored)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "questions.jsonl"
    data.write_text("".join(json.dumps({"question": q.question, "choices": list(q.choices), "answer": q.answer}) + "\n"
                            for q in questions), encoding="utf-8")
    lettered = "\\n".join(f"{letter}. {{{{choices[{i}]}}}}" for i, letter in enumerate(LETTERS))
    (folder / f"{LOCAL_TASK}.yaml").write_text("\n".join([
        f"task: {LOCAL_TASK}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data.resolve()))}",
        "test_split: test",
        "output_type: multiple_choice",
        f"description: {json.dumps(MC_HEADER)}",
        f'doc_to_text: "{{{{question}}}}\\n{lettered}\\nAnswer:"',
        f"doc_to_choice: {json.dumps(list(LETTERS))}",
        "doc_to_target: answer",
        "metric_list:",
        "  - {metric: acc, aggregation: mean, higher_is_better: true}",
        ""]), encoding="utf-8")
    return folder


def task_manager(*include: str | Path | None) -> Any:
    """lm-eval's task index, with the task folders given (ours, the user's) beside its own tasks."""
    from lm_eval.tasks import TaskManager

    folders = [str(f) for f in include if f is not None]
    with quiet():
        return TaskManager(include_path=folders or None)


def check_names(names: list[str], manager: Any) -> None:
    """Unknown task names fail before any model loads, with the nearest known ones."""
    import difflib

    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            raise ConfigError(f"benchmarks: {name!r} is not an lm-eval task"
                              + (f" (did you mean {', '.join(map(repr, close))}?)" if close else "")
                              + "; `lm-eval ls tasks` lists them")


def available(names: list[str], manager: Any) -> tuple[list[str], dict[str, str]]:
    """The tasks whose data lm-eval can load here, and for the others one line on why not."""
    from lm_eval.tasks import get_task_dict

    ok, missing = [], {}
    for name in names:
        try:
            with quiet():
                get_task_dict([name], manager)
            ok.append(name)
        except Exception as e:  # lm-eval and datasets raise many kinds (ConnectionError, FileNotFoundError, ...)
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            missing[name] = reason[:200]
            log.warning("benchmark %s: unavailable here (%s); the evaluation goes on without it", name, missing[name])
    return ok, missing


def per_document(view: View, tasks: list[str], manager: Any, *, limit: int, batch_size: int) -> dict[str, list[float]]:
    """task -> 1.0/0.0 per document (acc_norm where the task has it, else acc) for one model."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    out: dict[str, list[float]] = {}
    with view.active() as model, quiet():
        lm = HFLM(pretrained=model, tokenizer=view.tokenizer, batch_size=batch_size)
        for task in tasks:  # the user's file whole; `limit` is for the standard benchmarks
            result = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager, num_fewshot=0,
                                             limit=None if task == LOCAL_TASK else limit or None, log_samples=True,
                                             bootstrap_iters=0)
            # a group (mmlu) logs its subtasks' documents: all of them make its micro-average
            docs = [d for k, logged in result["samples"].items() if k == task or k in _subtasks(result, task)
                    for d in logged]
            key = "acc_norm" if docs and "acc_norm" in docs[0] else "acc"
            out[task] = [float(d[key]) for d in docs]
    return out


def _subtasks(result: dict[str, Any], task: str) -> set[str]:
    found, todo = set(), [task]
    while todo:
        for sub in result.get("group_subtasks", {}).get(todo.pop(), []):
            found.add(sub)
            todo.append(sub)
    return found


@contextlib.contextmanager
def quiet():
    """lm-eval's logs below warnings and its progress bars off: align's own progress says what runs. Its
    `git describe` (for the results' record) writes "fatal: not a git repository" to the process's own
    stderr outside a checkout, so file descriptor 2 itself points at /dev/null meanwhile; failures still
    arrive as exceptions."""
    loggers = [logging.getLogger(name) for name in QUIET]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
