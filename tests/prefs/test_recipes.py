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
        "training.max_steps=3", "training.batch_size=8", "generation.num_generations=4", "generation.max_new_tokens=8",
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
    from align.core.memory import micro_batches
    from align.prefs.train import common_args

    config = load_config(DPOConfig, None, [f"out_dir={tmp_path / 'run'}", f"model.name={tiny_model_dir}",
                                           "training.batch_size=8", "tracking.wandb=false"])
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(rank=0, size=2))
    micro = micro_batches(8, 1, 2, config.training.max_tokens_per_batch, 2 * config.training.max_length)
    args = common_args(config.training, StageDir(tmp_path / "run"), config.tracking, "dpo", micro)
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == (4, 1)
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


# ---------------------------------------------------------------- micro-batches and the pre-flight estimate


def test_dpo_micro_batches_train_the_same_global_batch(tiny_model_dir, tmp_path):
    """8 pairs a step in one pass, or in four passes of 2 pairs (a budget of 2 pairs x 2 x max_length): the
    same pairs, the same mean loss and the same gradient, so the same steps."""
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in separable_preferences(32)))

    def run(name, *extra):
        out = tmp_path / name
        dpo(load_config(DPOConfig, None, [
            f"out_dir={out}", f"model.name={tiny_model_dir}", f"data.train={tmp_path / 'p.jsonl'}",
            "data.eval_fraction=0", "model.quantization=none", "model.lora.r=4", "training.max_steps=3",
            "training.save_steps=3", "training.learning_rate=5e-3", "training.max_length=64", "tracking.wandb=false",
            "tracking.logging_steps=1", *extra]))
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        state = json.loads((out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
        steps = [r[k] for r in rows if "train/grad_norm" in r for k in ("train/loss", "train/grad_norm")]
        return steps, state["train_batch_size"]

    whole, whole_batch = run("whole")
    split, split_batch = run("split", "training.max_tokens_per_batch=256")
    assert (whole_batch, split_batch) == (8, 2)
    assert len(whole) == len(split) == 6  # loss and gradient norm of 3 steps
    assert split == pytest.approx(whole, rel=1e-4)


def test_grpo_samples_the_whole_batch_at_once_in_micro_batches(tiny_model_dir, tmp_path):
    """TRL derives the generation batch from the micro-batch and its accumulation: it stays batch_size x
    grad_accum completions, whole groups of num_generations."""
    import trl

    from align.core.memory import micro_batches
    from align.core.rundir import StageDir
    from align.prefs.train import common_args

    config = load_config(OnlineConfig, None, [f"model.name={tiny_model_dir}", "training.batch_size=8",
                                              "training.grad_accum=2", "generation.num_generations=4",
                                              "tracking.wandb=false"])
    micro = micro_batches(8, 2, 1, 100, 50)  # 2 completions a pass, 8 passes a step
    args = trl.GRPOConfig(**common_args(config.training, StageDir(tmp_path / "run"), config.tracking, "grpo", micro),
                          num_generations=4, max_completion_length=8, use_cpu=True)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (2, 8)
    assert args.generation_batch_size == 16 and args.steps_per_generation == 8


@pytest.mark.parametrize(("method", "extra", "advice"), [
    ("dpo", ["training.max_length=64"], "lower training.max_tokens_per_batch (now 4096)"),
    # a pair is 2 x max_length: at 1024 one pair fills a 2048-token pass, so max_length is the setting
    ("dpo", ["training.max_length=1024", "training.max_tokens_per_batch=2048"], "lower training.max_length (now 1024)"),
    ("kto", ["training.max_length=64", "training.gradient_checkpointing=false"],
     "lower training.max_tokens_per_batch (now 4096), or set training.gradient_checkpointing=true"),
    ("grpo", ["reward.model=null", "reward.function=tests.ppo.toy_reward:digit_count", "training.max_tokens_per_batch=8"],
     "lower generation.max_new_tokens (now 32)"),
])
def test_a_budget_that_cannot_fit_is_refused_through_the_cli(method, extra, advice, tiny_model_dir, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from align.cli import cli
    from align.core import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 2**20)  # 1 MB available
    loaded = []
    monkeypatch.setattr("align.core.modeling.load_base", lambda *a, **k: loaded.append(1))
    data = f"data.prompts={DEMO / 'prompts.jsonl'}" if method == "grpo" else f"data.train={DEMO / 'rankings.jsonl'}"
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [method, "--out", str(out), *(f"--set={s}" for s in [
        f"model.name={tiny_model_dir}", data, "tracking.wandb=false", *extra])])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert errors[0].startswith(f"error: {method.upper()} needs about ") and errors[0].endswith(advice)
    assert not loaded and not out.exists()
