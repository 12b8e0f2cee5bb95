"""KTO and ORPO, two stages added through the registry alone: each learns a separable preference on the tiny
model and saves an adapter peft loads, and `align run` runs it between SFT and the evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import align
from align.cli import cli
from align.convert import pairs_to_kto
from align.core.config_docs import field_docstrings
from align.prefs.config import KTOConfig, KTOData, ORPOConfig
from align.prefs.train import kto_split
from align.stages import STAGES
from align.reward.formats import load_groups
from tests.reward.test_train import separable_preferences
from tests.test_configs import declaring_class, reachable_config_classes

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "pipeline" / "tiny.yaml"


def write_pairs(path: Path, n: int, seed: int) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in separable_preferences(n, seed=seed)))
    return path


def logged(out: Path, key: str) -> list[float]:
    return [r[key] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if key in r]


def chosen_logp_gain(adapter: Path, rows: list[dict]) -> float:
    """Mean log p(chosen | prompt) of the saved adapter, loaded by peft alone, minus the base model's."""
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()

    def logp() -> float:
        total = 0.0
        for row in rows:
            prompt = [{"role": "user", "content": row["prompt"]}]
            start = len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                      return_dict=True)["input_ids"])
            ids = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": row["chosen"]}],
                                                tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
            with torch.inference_mode():
                logits = model(input_ids=ids).logits[0, :-1]  # (T-1, V): position t predicts token t+1
            token_logps = logits.log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
            total += token_logps[start - 1:].sum().item()
        return total / len(rows)

    trained = logp()
    with model.disable_adapter():
        base = logp()
    return trained - base


# ---------------------------------------------------------------- configs and data


@pytest.mark.parametrize("cls", [KTOConfig, ORPOConfig], ids=lambda c: c.__name__)
def test_every_field_has_a_docstring(cls):
    """tests/test_configs.py walks a list of config classes of its own; this walks the two new ones."""
    missing = [f"{c.__qualname__}.{name}" for c in reachable_config_classes([cls]) for name in c.__dataclass_fields__
               if not field_docstrings(declaring_class(c, name)).get(name, "").strip()]
    assert not missing


def test_kto_holds_out_whole_prompts_and_shuffles_the_rows(write_jsonl):
    rankings = [{"prompt": f"Q{i}", "completions": [f"good{i}", f"mid{i}", f"bad{i}"], "ranks": [0, 1, 2]}
                for i in range(20)]
    path = write_jsonl("r.jsonl", rankings)
    train, held_out = kto_split(KTOData(train=str(path), eval_fraction=0.25), seed=3)
    prompts = lambda rows: {r["prompt"][0]["content"] for r in rows}  # noqa: E731
    assert len(prompts(held_out)) == 5 and not prompts(train) & prompts(held_out)
    # each prompt's best is desirable, its worst undesirable, the middle left out: nothing lost, nothing added
    key = lambda r: (r["prompt"][0]["content"], r["completion"][0]["content"], r["label"])  # noqa: E731
    assert sorted(map(key, train + held_out)) == sorted(map(key, pairs_to_kto(load_groups(str(path)))))
    # TRL reads KTO rows in order and pairs each with its neighbour for the KL estimate: pairs_to_kto's order
    # (Qi good, Qi bad, Qj good, ...) would train prompt by prompt, each prompt in one run of rows
    runs = 1 + sum(a["prompt"] != b["prompt"] for a, b in zip(train, train[1:]))
    assert runs > len(prompts(train)) + 5
    assert kto_split(KTOData(train=str(path), eval_fraction=0.25), seed=3) == (train, held_out)


# ---------------------------------------------------------------- training on the tiny model


def test_kto_command_learns_a_separable_preference(tiny_model_dir, tmp_path):
    """Through `align kto`, the registry's command."""
    out = tmp_path / "kto"
    result = CliRunner().invoke(cli, ["kto", "--out", str(out), *(f"--set={s}" for s in [
        f"model.name={tiny_model_dir}", f"data.train={write_pairs(tmp_path / 'p.jsonl', 64, seed=0)}",
        "model.quantization=none", "model.lora.r=8", "training.epochs=3", "training.learning_rate=5e-3",
        "training.max_length=96", "tracking.wandb=false", "tracking.logging_steps=1"])])
    assert result.exit_code == 0, result.output + repr(result.exception)
    metrics = json.loads((out / "metrics.json").read_text())
    printed = result.output.split("kto done:")[0].rstrip().splitlines()[-1]  # after a progress bar's \r
    shown = json.loads(printed[printed.index('{"'):])
    assert shown == {k: metrics[k] for k in STAGES["kto"].headline}  # every headline figure is in the metrics

    losses = logged(out, "train/loss")
    # step 1: policy = reference, so every row's implied reward and the KL estimate are 0 and each
    # loss term is 1 - σ(0) = 0.5 (KTO paper eqn. 7, desirable and undesirable alike)
    assert losses[0] == pytest.approx(0.5, abs=1e-4)
    assert max(losses[-5:]) < 0.2
    # on held-out prompts the desirable completions gained likelihood over the reference, the undesirable lost it
    assert metrics["eval/rewards/chosen"] > 0.5 and metrics["eval/rewards/rejected"] < -0.5
    assert metrics["eval/rewards/margins"] > 1.0
    assert chosen_logp_gain(out / "adapter", separable_preferences(8, seed=5)) > 1.0


def test_orpo_api_learns_a_separable_preference(tiny_model_dir, tmp_path):
    """Through `align.train_orpo`, the registry's Python API."""
    out = tmp_path / "orpo"
    config = align.stage_config("orpo", None, [
        f"out_dir={out}", f"model.name={tiny_model_dir}", f"data.train={write_pairs(tmp_path / 'p.jsonl', 64, seed=0)}",
        f"data.eval={write_pairs(tmp_path / 'e.jsonl', 32, seed=2)}", "model.quantization=none", "model.lora.r=8",
        "training.epochs=3", "training.learning_rate=5e-3", "training.max_length=96", "tracking.wandb=false",
        "tracking.logging_steps=1"])
    figures = align.train_orpo(config)
    assert all(isinstance(figures[k], float) for k in STAGES["orpo"].headline)

    # the loss is the SFT loss on the chosen completion minus λ·log σ(log-odds ratio) (ORPO paper eqn. 6)
    losses, ratios = logged(out, "train/loss"), logged(out, "train/log_odds_ratio")
    assert losses[-1] < losses[0] - 1.0
    # the odds-ratio term on its own learns the preference, not just the chosen text: log σ(.) rises towards 0
    assert ratios[-1] > ratios[0] + 0.3
    assert figures["eval/log_odds_chosen"] > 0.5  # held-out: the chosen completion's odds beat the rejected one's
    assert figures["eval/rewards/accuracies"] > 0.8
    assert chosen_logp_gain(out / "adapter", separable_preferences(8, seed=5)) > 1.0
    assert not (out / "adapter" / "ref").exists()  # no reference model, so no frozen copy of the adapter


@pytest.mark.parametrize("method", ["kto", "orpo"])
def test_resumed_from_a_middle_checkpoint_ends_as_an_unbroken_run(method, tiny_model_dir, tmp_path):
    """run_recipe's resume, through TRL's KTO (rows read in order, a token count outside the checkpoint) and
    ORPO (metrics kept in the trainer between logs) trainers: the same figures as a run never stopped."""
    import shutil

    from align.core.rundir import write_json_atomic
    from tests.reliability.stages import UNTIMED

    data = write_pairs(tmp_path / "p.jsonl", 32, seed=0)

    def run(out: Path, resume: bool = False) -> dict:
        return STAGES[method].train()(align.stage_config(method, None, [
            f"out_dir={out}", f"model.name={tiny_model_dir}", f"data.train={data}", "model.quantization=none",
            "model.lora.r=4", "training.max_steps=6", "training.save_steps=3", "training.learning_rate=5e-3",
            "training.max_length=64", "tracking.wandb=false", "tracking.logging_steps=2"]), resume=resume)

    whole = run(tmp_path / "whole")
    cut = tmp_path / "cut"
    run(cut)
    shutil.rmtree(cut / "checkpoints" / "checkpoint-6")  # as if killed between step 3's checkpoint and the end
    write_json_atomic(cut / "status.json", {**json.loads((cut / "status.json").read_text()), "state": "failed"})
    resumed = run(cut, resume=True)
    assert resumed["train/steps"] == 6
    assert {k: v for k, v in resumed.items() if not UNTIMED.search(k)} == \
           {k: v for k, v in whole.items() if not UNTIMED.search(k)}


# ---------------------------------------------------------------- `align run` through the registry


@pytest.mark.parametrize("method", ["kto", "orpo"])
def test_align_run_puts_the_stage_between_sft_and_eval(method, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the preset names its stage configs and data relative to the repository
    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path / "align-cache"))
    result = CliRunner().invoke(cli, ["run", "--config", str(TINY), *(f"--set={s}" for s in [
        f"runs_dir={tmp_path}", f"stages=[sft, {method}, eval]", "sft.training.max_steps=3",
        f"{method}.model.quantization=none", f"{method}.training.max_steps=3", f"{method}.training.max_length=96",
        # the preset's eval sets best_of: 2, which needs the reward model this run does not train
        "eval.eval_size=4", "eval.best_of=0"])])
    assert result.exit_code == 0, result.output + repr(result.exception)
    root = tmp_path / "tiny"
    manifest = json.loads((root / "manifest.json").read_text())
    assert {s: e["status"] for s, e in manifest["stages"].items()} == {"sft": "done", method: "done", "eval": "done"}
    assert set(manifest["stages"][method]["headline"]) == set(STAGES[method].headline)
    stage_config = (root / method / "config.yaml").read_text()
    assert str(root / "sft" / "adapter") in stage_config  # wired: the policy started from the SFT adapter
    assert (root / "eval" / "plots" / f"curves_{method}.png").is_file()  # its loss, drawn without a panel of its own
    assert (root / method / "adapter" / "adapter_config.json").exists()
    evaluation = json.loads((root / "eval" / "metrics.json").read_text())
    assert str(root / method) in (root / "eval" / "config.yaml").read_text()
    # the stage's policy was evaluated as `aligned`: its own weights, not the SFT model's again
    assert evaluation["aligned/perplexity"] != evaluation["sft/perplexity"]


def long_prompt_pairs(path: Path, n: int, words: int) -> Path:
    """Pairs whose prompt alone is about `words` tokens of the tiny tokenizer or more."""
    rows = [{"prompt": f"Question {i}: " + " ".join(["tell me about the weather today"] * (words // 5)),
             "chosen": f"Sunny {i}.", "rejected": f"No {i}."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def recipe_args(method: str, model, data: Path, out: Path, *extra: str) -> list[str]:
    return [method, "--out", str(out), *(f"--set={s}" for s in [
        f"model.name={model}", f"data.train={data}", "data.eval_fraction=0", "model.quantization=none",
        "training.max_steps=2", "training.batch_size=2", "training.max_length=32", "tracking.wandb=false",
        "tracking.logging_steps=1", *extra])]


def test_dpo_trains_on_pairs_whose_prompt_fills_max_length(tiny_model_dir, tmp_path):
    """TRL's default keep_start drops every pair whose prompt fills max_length (and crashes on an empty data
    set); keep_end cuts the conversation's start instead, as the reward model does."""
    data = long_prompt_pairs(tmp_path / "long.jsonl", 8, 60)
    result = CliRunner().invoke(cli, recipe_args("dpo", tiny_model_dir, data, tmp_path / "dpo"))
    assert result.exit_code == 0, result.output
    losses = logged(tmp_path / "dpo", "train/loss")
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # two steps, finite


def test_orpo_leaves_out_pairs_whose_prompt_fills_max_length_and_counts_them(tiny_model_dir, tmp_path):
    """TRL's ORPO never cuts the prompt: one that fills max_length leaves empty completions and a NaN loss."""
    long = [json.loads(line) for line in long_prompt_pairs(tmp_path / "l.jsonl", 3, 60).read_text().splitlines()]
    short = [{"prompt": f"Hi {i}", "chosen": f"Hello {i}.", "rejected": f"Go {i}."} for i in range(8)]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in long + short))
    result = CliRunner().invoke(cli, recipe_args("orpo", tiny_model_dir, mixed, tmp_path / "orpo"))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "orpo" / "metrics.json").read_text())
    assert metrics["data/too_long_dropped"] == 3 and metrics["train/loss"] == metrics["train/loss"]
    only_long = CliRunner().invoke(cli, recipe_args("orpo", tiny_model_dir, tmp_path / "l.jsonl", tmp_path / "none"))
    assert only_long.exit_code == 2 and not (tmp_path / "none").exists()
    assert only_long.output.strip().splitlines()[-1] == (
        "error: every one of the 3 pairs' prompts fills training.max_length (32) tokens, leaving no completion to "
        "learn from: raise training.max_length")
