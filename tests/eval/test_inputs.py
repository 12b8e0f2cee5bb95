"""Models on a shared base, the same seeds for every model, resume, and bad input named clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from align.cli import cli
from align.core import modeling
from align.core.errors import AlignError, DataError
from align.eval import generate, run
from align.eval.config import GenerationSettings
from align.eval.models import ModelError, ModelPool, resolve
from align.eval.run import JudgeError, evaluate
from tests.eval.test_run import make_config


def test_adapters_share_one_base_and_the_base_runs_with_adapters_off(eval_dirs):
    specs = {"base": resolve("base", str(eval_dirs["base"])), "sft": resolve("sft", str(eval_dirs["sft"]))}
    assert specs["sft"].adapter == eval_dirs["sft"] / "adapter" and specs["sft"].base == specs["base"].base
    pool = ModelPool(specs, "none")
    assert len(pool.networks) == 1
    ids = torch.tensor([[5, 6, 7, 8]])
    plain = modeling.load_base(modeling.ModelConfig(name=str(eval_dirs["base"]), quantization="none"),
                               modeling.load_tokenizer(str(eval_dirs["base"]))).eval()
    with torch.no_grad():
        want = plain(input_ids=ids).logits
        with pool.view("base").active() as model:
            base = model(input_ids=ids).logits
        with pool.view("sft").active() as model:
            tuned = model(input_ids=ids).logits
    assert torch.allclose(base, want, atol=1e-5)
    assert not torch.allclose(tuned, want, atol=1e-3)


def test_every_model_samples_with_the_same_seeds(eval_dirs, heldout):
    from align.core.records import load_records

    prompts = load_records(heldout, "prompts")[:3]
    pool = ModelPool({"a": resolve("a", str(eval_dirs["base"])), "sft": resolve("sft", str(eval_dirs["sft"]))}, "none")
    settings = GenerationSettings(max_new_tokens=6, samples_per_prompt=2, batch_size=2)
    first = generate.answer(pool.view("a"), prompts, settings, 2)
    generate.answer(pool.view("sft"), prompts, settings, 2)  # draws from the global generator in between
    again = generate.answer(pool.view("a"), prompts, settings, 2)
    assert first == again
    assert len(first.sampled) == 3 and all(len(s) == 2 for s in first.sampled)
    assert first.sampled[0][0].token_ids != first.sampled[0][1].token_ids  # two samples of one prompt differ


def test_answers_on_the_working_copy_are_the_models_own(eval_dirs, heldout):
    """generation.working_copy: the SFT adapter merged into a packed copy (2 prompts x 2 samples = 4 rows) gives the
    same answers token for token, and log-probs within rounding."""
    from dataclasses import replace

    from align.core.records import load_records

    prompts = load_records(heldout, "prompts")[:4]
    pool = ModelPool({"sft": resolve("sft", str(eval_dirs["sft"]))}, "none")
    settings = GenerationSettings(max_new_tokens=6, samples_per_prompt=2, batch_size=2)
    own = generate.answer(pool.view("sft"), prompts, settings, 2)
    copied = generate.answer(pool.view("sft"), prompts, replace(settings, working_copy=True), 2)
    pairs = [*zip(own.greedy, copied.greedy), *zip(sum(own.sampled, []), sum(copied.sampled, []))]
    assert all(a.token_ids == b.token_ids for a, b in pairs)
    assert max(abs(a.logprob - b.logprob) for a, b in pairs) < 1e-3


def test_cut_at_eos():
    assert generate.cut_at_eos([4, 5, 2, 7, 2], [2]) == ([4, 5, 2], True)
    assert generate.cut_at_eos([4, 5], [2]) == ([4, 5], False)


def test_missing_model_path_names_the_model(tmp_path, eval_dirs, heldout):
    with pytest.raises(ModelError, match=r"model 'sft': .*runs/nowhere/sft: no such directory"):
        resolve("sft", str(tmp_path / "runs/nowhere/sft"))
    with pytest.raises(ModelError, match=r"model 'x': .* holds no model"):
        resolve("x", str(tmp_path))
    result = CliRunner().invoke(cli, ["eval", "--models", f"base={eval_dirs['base']},sft={tmp_path / 'no/sft'}",
                                      "--prompts", str(heldout), "--out", str(tmp_path / "out"),
                                      "--set", "tracking.wandb=false"])
    assert result.exit_code == 2 and "model 'sft'" in result.output and "no such directory" in result.output
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_reward_model_is_not_a_policy(eval_dirs):
    with pytest.raises(ModelError, match="model 'r'"):
        resolve("r", str(eval_dirs["reward"]))


def test_adapter_for_another_base(tmp_path, eval_dirs, heldout):
    moved = tmp_path / "sft"
    shutil.copytree(eval_dirs["sft"], moved)
    record = json.loads((moved / "adapter" / modeling.BASE_FILE).read_text())
    record.update(name=str(eval_dirs["narrow"]), path=str(eval_dirs["narrow"]))
    (moved / "adapter" / modeling.BASE_FILE).write_text(json.dumps(record))
    config = make_config(tmp_path, eval_dirs, heldout, **{"models.sft": moved})
    with pytest.raises(AlignError, match=r"model 'sft': adapter .* does not fit base"):
        evaluate(config)
    # found after the output directory was written; the corrected command needs no --overwrite
    assert json.loads((tmp_path / "eval" / "status.json").read_text())["state"] == "failed"
    evaluate(make_config(tmp_path, eval_dirs, heldout))
    assert json.loads((tmp_path / "eval" / "status.json").read_text())["state"] == "done"


def test_prompts_with_no_text(tmp_path, eval_dirs, write_jsonl):
    prompts = write_jsonl("p.jsonl", [{"prompt": "What is 2 + 2?"}, {"prompt": "  "}])
    with pytest.raises(DataError, match=r'p.jsonl:2: field "prompt": empty'):
        evaluate(make_config(tmp_path, eval_dirs, prompts))


def test_a_judge_that_always_raises_stops_the_run(tmp_path, eval_dirs, write_jsonl):
    prompts = write_jsonl("p.jsonl", [{"prompt": "Tell me a story."}, {"prompt": "Sing."}])
    config = make_config(tmp_path, eval_dirs, prompts, judge="align.demo.tasks:judge",
                         **{"generation.samples_per_prompt": 0})
    with pytest.raises(JudgeError, match=r"judge 'align.demo.tasks:judge' failed on every one of 2 answers of model "
                                         r"'base'; the first: ValueError: not a demo prompt"):
        evaluate(config)
    with pytest.raises(AlignError, match="no function 'nope'"):
        evaluate(make_config(tmp_path, eval_dirs, prompts, judge="align.demo.tasks:nope", out_dir=tmp_path / "o2"))


def test_resume_reuses_answers_only_when_nothing_changed(tmp_path, eval_dirs, heldout, monkeypatch):
    config = make_config(tmp_path, eval_dirs, heldout, eval_size=2, **{"generation.samples_per_prompt": 1,
                                                                       "generation.max_new_tokens": 4})
    first = evaluate(config)
    calls = []
    real = run.answer
    monkeypatch.setattr(run, "answer", lambda view, *a, **k: calls.append(view.label) or real(view, *a, **k))
    again = evaluate(config, resume=True)
    assert calls == [] and again["sft/reward_mean"] == first["sft/reward_mean"]
    config.generation.max_new_tokens = 5
    evaluate(config, resume=True)
    assert calls == ["base", "sft"]


def test_cli_prints_the_table_and_the_report(tmp_path, eval_dirs, heldout):
    out = tmp_path / "cli"
    args = ["eval", "--models", f"base={eval_dirs['base']},sft={eval_dirs['sft']}", "--reward", str(eval_dirs["reward"]),
            "--prompts", str(heldout), "--size", "2", "--best-of", "2", "--out", str(out),
            "--set", "generation.max_new_tokens=4", "--set", "tracking.wandb=false"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "win_rate_vs_base" in result.output and "sft_best_of_2" in result.output
    assert f"report: {out / 'report.html'}" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval/prompts"] == 2 and "sft_best_of_2/reward_mean" in metrics


def test_cached_prompts_give_the_plain_greedy_answers_and_their_logprobs(eval_dirs, heldout):
    from align.core.records import load_records
    from align.eval.likelihood import continuation_logprobs

    prompts = load_records(heldout, "prompts")[:3]
    pool = ModelPool({"sft": resolve("sft", str(eval_dirs["sft"]))}, "none")
    view = pool.view("sft")
    settings = GenerationSettings(max_new_tokens=6, samples_per_prompt=2, batch_size=3, temperature=0.7)
    answers = generate.answer(view, prompts, settings, 2)
    ids = generate.encode_prompts(view, prompts, settings.max_prompt_length)
    with view.active() as model, torch.no_grad():
        for row, a in zip(ids, answers.greedy):  # one prompt at a time: no padding, no cache
            out = model.generate(input_ids=torch.tensor([row]), max_new_tokens=6, do_sample=False,
                                 pad_token_id=view.tokenizer.pad_token_id, eos_token_id=view.eos_ids)
            assert generate.cut_at_eos(out[0, len(row):].tolist(), view.eos_ids)[0] == a.token_ids
    # greedy and sampled (the sample's temperature is applied after the recorder sees the logits)
    every = [(p, a) for p, a in enumerate(answers.greedy)] + [(p, a) for p, s in enumerate(answers.sampled) for a in s]
    recomputed = continuation_logprobs(view, [ids[p] for p, _ in every], [a.token_ids for _, a in every], temperature=0.7)
    assert [a.logprob for _, a in every] == pytest.approx(recomputed, abs=1e-3)


def test_auto_precision_follows_what_the_adapters_were_trained_on():
    from align.eval.models import ModelSpec, base_quantization

    base = ModelSpec("base", "b", "/m")
    qlora = ModelSpec("sft", "s", "/m", adapter=Path("/a"), lora=True, trained_on="nf4")
    plain = ModelSpec("other", "o", "/n", adapter=Path("/c"), lora=True, trained_on="none")
    assert base_quantization({"base": base, "sft": qlora, "other": plain}, "auto") == {("/m", ""): "nf4", ("/n", ""): "none"}
    assert base_quantization({"base": base}, "auto") == {("/m", ""): "none"}
    assert base_quantization({"base": base, "other": plain}, "nf4") == {("/m", ""): "nf4", ("/n", ""): "nf4"}


def test_dequantised_nf4_weights_give_the_4bit_models_outputs(eval_dirs):
    from align.eval.models import dequantize_4bit

    config = modeling.ModelConfig(name=str(eval_dirs["base"]), quantization="nf4")
    model = modeling.load_base(config, modeling.load_tokenizer(str(eval_dirs["base"]))).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
        assert dequantize_4bit(model) == 14  # 7 projections in each of 2 layers; the tied head stays as it is
        got = model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4)
