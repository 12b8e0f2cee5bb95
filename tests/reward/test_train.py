"""The reward model on the tiny model: it learns a separable preference; outputs load and score."""

from __future__ import annotations

import json
import random

import pytest

from align.core.config import load_config
from align.demo.tasks import FILLERS, make_task
from align.reward.config import RewardConfig
from align.reward.score import RewardModel, score_file
from align.reward.train import train


def separable_preferences(n: int, seed: int = 0) -> list[dict]:
    """Concise right answers preferred to padded wrong ones: a preference a tiny model can learn."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        task = make_task(rng)
        rows.append({"prompt": task.prompt, "chosen": task.response, "rejected": f"{task.wrong} {rng.choice(FILLERS)}"})
    return rows


def test_heldout_accuracy_rises_above_0_9(reward_run):
    _, figures = reward_run
    assert figures["eval_before/accuracy"] < 0.8
    assert figures["eval/accuracy"] > 0.9
    assert figures["eval/margin"] > figures["eval_before/margin"]


def test_saved_model_reloads_and_scores_like_training(reward_run):
    root, figures = reward_run
    model = RewardModel.load(root / "run")
    rows = separable_preferences(40, seed=2)
    chosen = model.score([[{"role": "user", "content": r["prompt"]}] for r in rows], [r["chosen"] for r in rows])
    rejected = model.score([[{"role": "user", "content": r["prompt"]}] for r in rows], [r["rejected"] for r in rows])
    assert ((chosen > rejected).float().mean().item()) == pytest.approx(figures["eval/accuracy"])
    normalised = model.normaliser(chosen)
    assert model.normaliser.std == pytest.approx(figures["normaliser/std"])
    assert normalised.mean().item() > 0  # chosen answers score above the reference mean


def test_score_file_writes_raw_and_normalised_rewards(reward_run, tmp_path):
    root, figures = reward_run
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"prompt": "What is 2 + 3?", "completions": ["2 + 3 = 5.", "2 + 3 = 6."]}) + "\n"
                    + json.dumps({"prompt": "What is 1 + 1?", "response": "1 + 1 = 2."}) + "\n")
    assert score_file(str(root / "run"), str(data), str(tmp_path / "out.jsonl")) == 3
    first, second = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(first["reward"]) == 2 and len(first["reward_normalised"]) == 2
    assert isinstance(second["reward"], float) and "reward_normalised" in second
    # raw: the reward model's own score of each completion, in the file's order
    model = RewardModel.load(root / "run")
    prompts = [[{"role": "user", "content": q}] for q in ("What is 2 + 3?", "What is 2 + 3?", "What is 1 + 1?")]
    direct = model.score(prompts, ["2 + 3 = 5.", "2 + 3 = 6.", "1 + 1 = 2."]).tolist()
    raw = [*first["reward"], second["reward"]]
    assert raw == pytest.approx(direct, abs=1e-5) and len({round(r, 4) for r in raw}) == 3
    # normalised: (raw - mean) / std with the normaliser fitted at the end of training (not 0 and 1)
    mean, std = figures["normaliser/mean"], figures["normaliser/std"]
    assert abs(mean) > 1e-3 and abs(std - 1) > 1e-3
    assert [*first["reward_normalised"], second["reward_normalised"]] == pytest.approx(
        [(r - mean) / std for r in raw], abs=1e-5)


def test_resume_gives_the_same_model_as_an_uninterrupted_run(tiny_model_dir, tmp_path):
    rows = separable_preferences(48, seed=3)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def config(out, epochs):
        return load_config(RewardConfig, None, [
            f"out_dir={out}", f"model.name={tiny_model_dir}", f"data.train={tmp_path / 't.jsonl'}",
            "model.quantization=none", "training.batch_size=8", f"training.epochs={epochs}", "training.save_steps=5",
            "training.lr_scheduler=constant", "tracking.wandb=false", "data.eval_fraction=0.2", "model.lora.dropout=0",
        ])

    whole = train(config(tmp_path / "whole", 2))
    train(config(tmp_path / "cut", 1))  # 5 steps, checkpoint at 5
    (tmp_path / "cut" / "status.json").write_text('{"state": "failed"}')
    # the epochs are the one setting that differs: a resume takes it only when allowed
    resumed = train(config(tmp_path / "cut", 2), resume=True, allow_changes=True)
    assert resumed["train/steps"] == whole["train/steps"] == 10
    assert resumed["eval/margin"] == pytest.approx(whole["eval/margin"], rel=1e-5)


def test_a_moved_reward_model_finds_its_base_by_name(reward_run, tmp_path, tiny_model_dir):
    import shutil

    root, _ = reward_run
    moved = tmp_path / "moved"
    shutil.copytree(root / "run", moved)
    record = json.loads((moved / "adapter" / "align_base.json").read_text())
    record["path"] = "/nowhere/else/model"  # trained on another machine or cache
    (moved / "adapter" / "align_base.json").write_text(json.dumps(record))
    model = RewardModel.load(moved)
    assert model.model.config._name_or_path == str(tiny_model_dir)


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_gradient_checkpointing_trains_the_same_model(tiny_model_dir, tmp_path, quantization, monkeypatch):
    """Recomputing activations saves memory and changes nothing else: the same steps give the same model."""
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in separable_preferences(32, seed=4)))

    def run(name, checkpointing):
        return train(load_config(RewardConfig, None, [
            f"out_dir={tmp_path / name}", f"model.name={tiny_model_dir}", f"data.train={tmp_path / 't.jsonl'}",
            f"model.quantization={quantization}", "training.batch_size=8", "training.epochs=1", "model.lora.dropout=0",
            "training.learning_rate=3e-3", f"training.gradient_checkpointing={checkpointing}", "tracking.wandb=false",
            "data.eval_fraction=0.25",
        ]))

    from tests.ppo.test_speedups import count_checkpointed_passes

    plain = run("plain", False)
    recomputed = count_checkpointed_passes(monkeypatch)
    checkpointed = run("checkpointed", True)
    assert recomputed  # the decoder layers did run through torch.utils.checkpoint
    assert plain["eval/margin"] != plain["eval_before/margin"]  # it trained
    for key in ("eval/margin", "normaliser/mean", "normaliser/std"):
        assert checkpointed[key] == pytest.approx(plain[key], rel=1e-4), key


def test_batcher_offsets_each_groups_pairs_to_its_own_completions(tiny_model_dir):
    """Pairs index the batch's flat list of completions: without each group's offset every group's
    pairs would point into the first group, and only it would get a gradient."""
    from align.core import modeling
    from align.reward.formats import Group
    from align.reward.micro_batches import Batcher

    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    user = ({"role": "user", "content": "Q"},)
    groups = [Group(user, ("a", "b", "c"), (0, 1, 2), 0.5, "x:1"),  # completions 0 1 2 of the batch
              Group(user, ("d", "e"), (1, 0), 2.0, "x:2")]  # completions 3 4: "e" (4) beats "d" (3)
    batch = Batcher(tokenizer, 64, use_margin=True)(groups)
    assert len(batch["inputs"]) == 1 and batch["inputs"][0]["input_ids"].shape[0] == 5
    assert batch["micro"] == [[0, 1, 2, 3, 4]]  # one micro-batch keeps the batch's order
    assert batch["pairs"].tolist() == [[0, 1], [0, 2], [1, 2], [4, 3]]
    assert batch["pair_group"].tolist() == [0, 0, 0, 1]
    assert batch["margins"].tolist() == [0.5, 0.5, 0.5, 2.0]
    assert Batcher(tokenizer, 64, use_margin=False)(groups)["margins"] is None


def test_a_run_shorter_than_logging_steps_still_logs_its_last_step(tiny_model_dir, tmp_path):
    """The evaluation draws every stage's curve from metrics.jsonl: a short run must leave one."""
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in separable_preferences(24)))
    figures = train(load_config(RewardConfig, None, [
        f"out_dir={tmp_path / 'run'}", f"model.name={tiny_model_dir}", f"data.train={tmp_path / 'p.jsonl'}",
        "model.lora.r=4", "model.quantization=none", "tracking.wandb=false", "tracking.logging_steps=50"]))
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in logged if "train/loss" in r]
    assert figures["train/steps"] == 3 and steps == [3]


@pytest.mark.parametrize(("groups", "steps"), [(8, 1), (24, 2)])
def test_a_last_accumulation_that_is_not_full_still_steps(groups, steps, tiny_model_dir, tmp_path):
    """batch_size 8 x grad_accum 2: 8 groups are one step, 24 two (the second of one batch), as total_steps says."""
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in separable_preferences(groups)))
    figures = train(load_config(RewardConfig, None, [
        f"out_dir={tmp_path / 'run'}", f"model.name={tiny_model_dir}", f"data.train={tmp_path / 'p.jsonl'}",
        "data.eval_fraction=0", "training.batch_size=8", "training.grad_accum=2", "model.lora.r=4",
        "model.quantization=none", "tracking.wandb=false", "tracking.logging_steps=1"]))
    assert figures["train/steps"] == steps


def test_the_reward_stage_reports_how_its_reward_follows_length(reward_run):
    """The demo preference rewards concise answers (the rejected ones are padded): the trained model's reward
    falls with length over the reference set, and the stage says so."""
    _, figures = reward_run
    assert -1 <= figures["normaliser/length_corr"] < -0.3
    assert figures["normaliser/length_slope_per_100_tokens"] < 0
