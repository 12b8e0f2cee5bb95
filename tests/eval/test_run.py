"""A whole evaluation on the tiny model: every file, every metric, the report's table, bad input."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import pytest

from align.core.config import load_config
from align.eval import scores
from align.eval.config import EvalConfig
from align.eval.report import cell
from align.eval.run import evaluate


def make_config(tmp_path, eval_dirs, heldout, **extra) -> EvalConfig:
    overrides = [
        f"out_dir={tmp_path / 'eval'}",
        "models=" + json.dumps({"base": str(eval_dirs["base"]), "sft": str(eval_dirs["sft"])}),
        f"reward={eval_dirs['reward']}", f"prompts={heldout}", "eval_size=0",
        "generation.max_new_tokens=8", "generation.samples_per_prompt=2", "generation.batch_size=4",
        "bootstrap_samples=200", "tracking.wandb=false",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(EvalConfig, None, overrides)


class TableReader(HTMLParser):
    """The cells of <table id="comparison">, row by row."""

    def __init__(self):
        super().__init__()
        self.rows, self.inside, self.cell = [], False, None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id") == "comparison":
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("td", "th"):
            self.rows[-1].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


@pytest.fixture(scope="module")
def finished(tmp_path_factory, eval_dirs):
    """One full evaluation, shared by the checks below (it is the slow part)."""
    tmp = tmp_path_factory.mktemp("run")
    rows = [json.loads(line) for line in (Path(__file__).parents[2] / "data/demo/heldout.jsonl").read_text().splitlines()[:6]]
    rows.append({"prompt": "Tell me about rivers."})
    prompts = tmp / "heldout.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = tmp / "general.txt"
    text.write_text("Rivers carry water to the sea.\n\nA garden needs light and water to grow.\n")
    mc = tmp / "mc.csv"
    mc.write_text('What is 2 + 2?,3,4,5,6,B\n"Which is a colour?",red,run,rain,rice,A\n')
    config = make_config(tmp, eval_dirs, prompts, best_of=3, judge="align.demo.tasks:judge",
                         perplexity_text=text, mmlu=mc, **{"stages.sft": eval_dirs["sft"]})
    return config, evaluate(config)


def test_every_file_and_metric(finished):
    config, metrics = finished
    out = Path(config.out_dir)
    for name in ("config.yaml", "metrics.json", "metrics.jsonl", "status.json", "generations.jsonl", "report.md",
                 "report.html", "plots/rewards.png", "plots/win_rates.png", "plots/reward_vs_kl.png",
                 "plots/reward_vs_length.png", "plots/curves_sft.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "status.json").read_text())["state"] == "done"
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    for row in ("base", "sft", "base_best_of_3", "sft_best_of_3"):
        for metric in ("reward_mean", "response_length", "distinct_1", "distinct_2", "rouge1", "rouge2", "rougeL",
                       "bleu", "judge_mean", "judge_errors"):
            assert f"{row}/{metric}" in metrics, f"{row}/{metric}"
    for row in ("base", "sft"):
        for metric in ("kl_to_base", "perplexity", "mmlu_accuracy", "reward_mean_sampled"):
            assert f"{row}/{metric}" in metrics, f"{row}/{metric}"
    assert metrics["sft/win_rate_vs_base"] + metrics["base/win_rate_vs_sft"] == pytest.approx(1.0)
    assert "base/win_rate_vs_base" not in metrics and "sft/win_rate_vs_sft" not in metrics
    assert metrics["base/kl_to_base"] == 0.0
    assert metrics["sft/kl_to_base_ci_low"] <= metrics["sft/kl_to_base"] <= metrics["sft/kl_to_base_ci_high"]
    # best-of-n picks the highest of its samples, so it can never score below their average
    assert metrics["sft_best_of_3/reward_mean"] >= metrics["sft/reward_mean_sampled"] - 1e-9
    # the last prompt is no demo task: the demo judge raises on it, and that is one recorded error per row
    assert metrics["sft/judge_errors"] == 1.0 and metrics["base/judge_errors"] == 1.0
    assert 0 <= metrics["sft/mmlu_accuracy"] <= 1 and metrics["sft/perplexity"] > 1
    assert metrics["eval/prompts"] == 7


def test_generations_hold_every_answer_and_score(finished):
    config, metrics = finished
    records = [json.loads(line) for line in (Path(config.out_dir) / "generations.jsonl").read_text().splitlines()]
    assert len(records) == 7
    for record in records:
        assert set(record["answers"]) == {"base", "sft", "base_best_of_3", "sft_best_of_3"}
        assert len(record["answers"]["sft"]["samples"]) == 3  # enough samples for best-of-3
        chosen = record["answers"]["sft_best_of_3"]
        assert chosen["reward"] == max(s["reward"] for s in record["answers"]["sft"]["samples"])
    assert "not a demo prompt" in records[-1]["answers"]["sft"]["judge_error"]
    assert records[-1]["reference"] is None
    mean = sum(r["answers"]["sft"]["reward"] for r in records) / len(records)
    assert mean == pytest.approx(metrics["sft/reward_mean"])
    # the length figures, from the answers as written
    sft = [(r["answers"]["sft"]["tokens"], r["answers"]["sft"]["reward"]) for r in records]
    base = [(r["answers"]["base"]["tokens"], r["answers"]["base"]["reward"]) for r in records]
    corr = scores.pearson([r for _, r in sft], [n for n, _ in sft])
    # NaN (every answer cut at the same length) is left out of metrics.json, as JSON has no NaN
    assert metrics.get("sft/reward_length_corr", math.nan) == pytest.approx(corr, nan_ok=True)
    matched = scores.length_matched([n for n, _ in sft], [n for n, _ in base], 0.2)
    assert metrics["sft/length_matched_prompts_vs_base"] == len(matched)


def test_report_table_matches_the_metrics(finished):
    config, metrics = finished
    reader = TableReader()
    reader.feed((Path(config.out_dir) / "report.html").read_text())
    header, *rows = reader.rows
    assert header[0] == "model" and "reward_mean" in header and "win_rate_vs_sft" in header
    assert [r[0] for r in rows] == ["base", "sft", "base_best_of_3", "sft_best_of_3"]
    per_row = {r[0]: dict(zip(header[1:], r[1:])) for r in rows}
    for name, cells in per_row.items():
        figures = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(name + "/")}
        for column, text in cells.items():
            assert text == cell(figures, column), (name, column)
    assert per_row["base"]["kl_to_base"].startswith("0.000")
    assert per_row["sft_best_of_3"]["perplexity"] == "—"
    assert "data:image/png;base64," in (Path(config.out_dir) / "report.html").read_text()
    md = (Path(config.out_dir) / "report.md").read_text()
    assert "![Win rates](plots/win_rates.png)" in md and "| sft_best_of_3 |" in md


def test_kl_to_base_is_the_mean_log_ratio_of_the_sampled_answers(finished, eval_dirs):
    # recompute from the checkpointed answers with plain unbatched passes: the SFT adapter on, then off
    import torch

    from align.core.records import load_records
    from align.eval.generate import encode_prompts
    from align.eval.models import ModelPool, resolve

    config, metrics = finished
    body = json.loads(next(Path(config.out_dir, "checkpoints").glob("checkpoint-*/answers.json")).read_text())
    pool = ModelPool({"base": resolve("base", str(eval_dirs["base"])), "sft": resolve("sft", str(eval_dirs["sft"]))},
                     "none")
    prompts = load_records(config.prompts, "prompts")
    ids = encode_prompts(pool.view("sft"), prompts, config.generation.max_prompt_length)

    def logprob(view, context, answer):
        with view.active() as model, torch.no_grad():
            logits = model(input_ids=torch.tensor([context + answer])).logits[0].float()
        logp = torch.log_softmax(logits / config.generation.temperature, -1)
        return sum(logp[len(context) - 1 + t, tok].item() for t, tok in enumerate(answer))

    per_prompt = []
    for p, samples in enumerate(body["answers"]["sft"]["sampled"]):
        ratios = [logprob(pool.view("sft"), ids[p], s["token_ids"]) - logprob(pool.view("base"), ids[p], s["token_ids"])
                  for s in samples]
        per_prompt.append(sum(ratios) / len(ratios))
    assert metrics["sft/kl_to_base"] == pytest.approx(sum(per_prompt) / len(per_prompt), abs=1e-3)


def test_a_model_equal_to_its_base_is_0_nats_from_it_at_the_sampling_temperature(eval_dirs, heldout, tmp_path):
    """An adapter with LoRA B = 0 leaves its base as it was: kl_to_base is 0 at temperature 0.7 when the
    answers' log-probs (recorded while sampling) and the base's are taken at that same temperature."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    from align.core import modeling
    from align.core.rundir import StageDir
    from align.eval.generate import answer
    from align.eval.models import ModelPool
    from align.eval.run import Evaluation, check_inputs

    torch.manual_seed(0)
    identity = get_peft_model(LlamaForCausalLM.from_pretrained(eval_dirs["base"]),
                              LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))  # B = 0
    modeling.save_loadable(identity, AutoTokenizer.from_pretrained(eval_dirs["base"]), tmp_path / "same" / "adapter",
                           modeling.ModelConfig(name=str(eval_dirs["base"]), quantization="none"))
    config = make_config(tmp_path, eval_dirs, heldout, **{
        "models": json.dumps({"base": str(eval_dirs["base"]), "same": str(tmp_path / "same")}),
        "generation.temperature": 0.7})
    inputs = check_inputs(config)
    evaluation = Evaluation(config, StageDir(config.out_dir), inputs)
    pool = ModelPool(inputs.specs, "none")
    answers = answer(pool.view("same"), evaluation.prompts, config.generation, config.samples_per_seed)
    assert all(a.token_ids for row in answers.sampled for a in row)
    figures = evaluation.kl_to_base(pool, "same", answers)
    assert figures["kl_to_base"] == pytest.approx(0.0, abs=1e-4)
    assert figures["kl_to_base_ci_low"] == pytest.approx(0.0, abs=1e-4)
    assert figures["kl_to_base_ci_high"] == pytest.approx(0.0, abs=1e-4)
