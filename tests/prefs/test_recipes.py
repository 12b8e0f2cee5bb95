"""DPO, GRPO and RLOO recipes on the tiny model: our data, our output contract, TRL's trainers."""

from __future__ import annotations

import json

import pytest

from align.core.config import load_config
from align.prefs.config import DPOConfig, OnlineConfig
from align.prefs.train import RuleFunction, dpo, online, preference_examples
from tests.conftest import DEMO
from tests.reward.test_train import separable_preferences


def test_rankings_become_all_their_pairs(write_jsonl):
    path = write_jsonl("r.jsonl", [{"prompt": "Q", "completions": ["a", "b", "c"], "ranks": [2, 0, 1]}])
    rows = preference_examples(str(path))
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [("b", "a"), ("b", "c"), ("c", "a")]


def test_dpo_learns_a_separable_preference(tiny_model_dir, tmp_path):
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in separable_preferences(64)))
    figures = dpo(load_config(DPOConfig, None, [
        f"out_dir={tmp_path / 'run'}", f"model.name={tiny_model_dir}", f"data.train={tmp_path / 'p.jsonl'}",
        "model.quantization=none", "model.lora.r=8", "training.epochs=3", "training.learning_rate=5e-3",
        "training.max_length=96", "tracking.wandb=false", "tracking.logging_steps=2"]))
    # the DPO loss starts at log 2 (policy = reference) and falls as the implicit reward separates the pair
    assert figures["train/loss"] < 0.5 < 0.693
    assert figures["eval/rewards/accuracies"] > 0.8
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_online_recipes_run_with_a_rule_reward(method, tiny_model_dir, tmp_path, monkeypatch):
    handed, score = [], RuleFunction.__call__  # the completions TRL has scored, one list per step

    def spy(self, prompts, completions, **kwargs):
        handed.append(completions)
        return score(self, prompts, completions, **kwargs)

    monkeypatch.setattr(RuleFunction, "__call__", spy)
    figures = online(load_config(OnlineConfig, None, [
        f"out_dir={tmp_path / method}", f"model.name={tiny_model_dir}", f"data.prompts={DEMO / 'prompts.jsonl'}",
        "reward.model=null", "reward.function=tests.ppo.toy_reward:digit_count", "model.quantization=none",
        "training.max_steps=3", "training.batch_size=8", "training.num_generations=4", "training.max_new_tokens=8",
        "tracking.wandb=false", "tracking.logging_steps=1"]), method)
    assert figures["train/steps"] == 3
    rewards = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rewards if "train/reward" in r]
    assert len(logged) == 3 and all(r["train/reward"] >= 0 for r in logged)  # digit counts
    # each step logs the mean digit count of the completions it sampled (the response's digits, not the prompt's)
    counts = [[sum(ch.isdigit() for ch in (c[-1]["content"] if isinstance(c, list) else c)) for c in step]
              for step in handed]
    assert len(counts) == 3 and all(len(step) == 8 for step in counts) and sum(map(sum, counts)) > 0
    assert [r["train/reward"] for r in logged] == pytest.approx([sum(step) / len(step) for step in counts], abs=1e-6)
    assert (tmp_path / method / "adapter" / "adapter_config.json").exists()


def test_rule_function_reads_message_completions():
    fn = RuleFunction("tests.ppo.toy_reward:digit_count")
    assert fn([[{"role": "user", "content": "Q"}]], [[{"role": "assistant", "content": "a1b22"}]]) == [3.0]
    assert fn.__name__ == "digit_count"


@pytest.mark.parametrize("kill_at", [None, 3])
def test_dpo_resumed_ends_with_the_figures_of_an_unbroken_run(kill_at, tiny_model_dir, tmp_path):
    """Killed after its last checkpoint (None) or at a middle one: the same figures as a run never
    stopped, not a step past the end nor a mean loss over the resumed steps alone."""
    from align.core.rundir import StageDir, write_json_atomic
    from tests.reliability.stages import UNTIMED

    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in separable_preferences(32)))

    def config(out):
        return load_config(DPOConfig, None, [
            f"out_dir={out}", f"model.name={tiny_model_dir}", f"data.train={tmp_path / 'p.jsonl'}",
            "model.quantization=none", "model.lora.r=4", "model.lora.dropout=0", "training.max_steps=6",
            "training.save_steps=3", "training.learning_rate=5e-3", "training.max_length=64", "tracking.wandb=false",
            "tracking.logging_steps=2"])

    whole = dpo(config(tmp_path / "whole"))
    cut = tmp_path / "cut"
    dpo(config(cut))
    if kill_at is not None:
        import shutil

        shutil.rmtree(cut / "checkpoints" / "checkpoint-6")
    status = json.loads((cut / "status.json").read_text())
    write_json_atomic(cut / "status.json", {**status, "state": "failed"})
    assert StageDir(cut).newest_checkpoint().name == f"checkpoint-{kill_at or 6}"
    resumed = dpo(config(cut), resume=True)
    assert whole["train/steps"] == resumed["train/steps"] == 6
    assert {k: v for k, v in resumed.items() if not UNTIMED.search(k)} == \
           {k: v for k, v in whole.items() if not UNTIMED.search(k)}


def test_the_batch_is_global_as_for_sft_and_the_reward_model(monkeypatch, tiny_model_dir, tmp_path):
    """Under n processes TRL takes per-process batches: each gets batch_size / n, and 8 does not split in 3."""
    from align.core import distributed
    from align.core.errors import AlignError
    from align.core.rundir import StageDir
    from align.prefs.train import common_args

    config = load_config(DPOConfig, None, [f"out_dir={tmp_path / 'run'}", f"model.name={tiny_model_dir}",
                                           "training.batch_size=8", "tracking.wandb=false"])
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(rank=0, size=2))
    args = common_args(config.training, StageDir(tmp_path / "run"), config.tracking, "dpo")
    assert args["per_device_train_batch_size"] == 4
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(rank=0, size=3))
    with pytest.raises(AlignError, match=r"training.batch_size=8 is the global batch: under 3 processes"):
        dpo(config)
    assert not (tmp_path / "run").exists()


def test_rloo_writes_to_its_own_directory_by_default():
    from align.stages import STAGES

    assert STAGES["rloo"].config_class()().out_dir == "runs/rloo"
    assert STAGES["grpo"].config_class()().out_dir == "runs/grpo"


def test_dpo_holds_out_whole_prompts(write_jsonl):
    """A ranking of 4 gives 6 pairs sharing its completions: all of them train, or all are held out."""
    from align.prefs.config import DPOData
    from align.prefs.train import preference_split

    rows = [{"prompt": f"Q{i}", "completions": [f"a{i}", f"b{i}", f"c{i}", f"d{i}"], "ranks": [0, 1, 2, 3]}
            for i in range(10)]
    train, held_out = preference_split(DPOData(train=str(write_jsonl("r.jsonl", rows)), eval_fraction=0.2), seed=3)
    prompts = lambda rs: {r["prompt"][0]["content"] for r in rs}  # noqa: E731
    assert len(train) == 8 * 6 and len(held_out) == 2 * 6
    assert not prompts(train) & prompts(held_out) and len(prompts(held_out)) == 2
