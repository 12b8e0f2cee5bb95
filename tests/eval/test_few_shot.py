"""The in-context baseline row (eval.few_shot): the base with K demonstrations before every prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.core.errors import ConfigError
from align.core.records import load_records
from align.eval import few_shot


def test_demonstrations_are_chat_turns_drawn_by_seed_and_never_an_evaluated_prompt(write_jsonl):
    rows = [{"instruction": f"Task {i}", "input": "ctx" if i == 1 else "", "output": f"Done {i}"} for i in range(6)]
    data = write_jsonl("sft.jsonl", rows)
    prompts = load_records(write_jsonl("p.jsonl", [{"prompt": f"Task {i}"} for i in range(4)]), "prompts")
    turns = few_shot.demonstrations(str(data), 2, prompts, seed=0)
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert {t["content"] for t in turns[::2]} == {"Task 4", "Task 5"}  # the only two not evaluated
    assert turns == few_shot.demonstrations(str(data), 2, prompts, seed=0)
    with pytest.raises(ConfigError, match="3 demonstrations wanted, but .* holds 2 that are not evaluated prompts"):
        few_shot.demonstrations(str(data), 3, prompts, seed=0)
    with_context = few_shot.demonstrations(str(data), 1, prompts[:1] + prompts[2:], seed=3)
    assert with_context[0]["content"] in ("Task 1\n\nctx", "Task 4", "Task 5")


def test_the_in_context_row_answers_as_the_base_asked_after_the_demonstrations(eval_dirs, heldout, tmp_path):
    from align.core.config import load_config
    from align.eval.config import EvalConfig
    from align.eval.generate import answer
    from align.eval.models import ModelPool, View, resolve
    from align.eval.run import evaluate
    from tests.conftest import DEMO

    config = load_config(EvalConfig, None, [
        f"out_dir={tmp_path / 'eval'}", f"models={{base: {eval_dirs['base']}, sft: {eval_dirs['sft']}}}",
        f"prompts={heldout}", "eval_size=4", "few_shot=2", f"few_shot_data={DEMO / 'sft.jsonl'}",
        "generation.max_new_tokens=6", "generation.samples_per_prompt=2", "bootstrap_samples=100",
        f"perplexity_text={DEMO / 'general.txt'}", "tracking.wandb=false"])
    metrics = evaluate(config)
    assert {"base_2shot/response_length", "base_2shot/kl_to_base", "base_2shot/distinct_1"} <= set(metrics)
    assert "base_2shot/perplexity" not in metrics and "base/perplexity" in metrics  # the base's own weights
    assert metrics["base_2shot/kl_to_base"] != 0  # the demonstrations change what the base says

    prompts = load_records(heldout, "prompts")[:4]
    turns = few_shot.demonstrations(str(DEMO / "sft.jsonl"), 2, prompts, seed=config.seed)
    asked = [{**p.__dict__, "messages": (*turns, *p.messages)} for p in prompts]
    base = ModelPool({"base": resolve("base", str(eval_dirs["base"]))}, "none").view("base")
    expected = answer(View("base", base.network, None), [type(prompts[0])(**a) for a in asked], config.generation, 0)
    written = [json.loads(line) for line in Path(config.out_dir, "generations.jsonl").read_text().splitlines()]
    assert [w["answers"]["base_2shot"]["text"] for w in written] == [a.text for a in expected.greedy]
    assert "base_2shot" in Path(config.out_dir, "report.html").read_text()

