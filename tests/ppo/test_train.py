"""PPO on the tiny model: a known reward rises with healthy telemetry; guards; resume; outputs."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from align.core.config import load_config
from align.ppo.config import PPOConfig
from align.ppo.train import TrainingHalted, train
from tests.conftest import DEMO


def toy_config(model_dir, out, *extra):
    return load_config(PPOConfig, None, [
        f"out_dir={out}", f"model.name={model_dir}", "model.quantization=none", "model.lora.r=8",
        "reward.model=null", "reward.function=tests.ppo.toy_reward:digit_count", "reward.no_eos_penalty=null",
        f"data.prompts={DEMO / 'prompts.jsonl'}", f"data.eval_prompts={DEMO / 'heldout.jsonl'}", "data.eval_size=8",
        "ppo.batch_size=16", "ppo.mini_batch_size=8", "ppo.learning_rate=1e-3", "sampling.max_new_tokens=12",
        "tracking.wandb=false", "eval_every=10", "sample_every=20", "save_every=20", *extra,
    ])


def step_logs(out):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "objective/scores" in r]


@pytest.fixture(scope="module")
def toy_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo") / "run"
    return out, train(toy_config(tiny_model_dir, out, "ppo.updates=60"))


def test_known_reward_rises_and_kl_stays_bounded(toy_run):
    out, figures = toy_run
    logs = step_logs(out)
    assert len(logs) == 60
    first = statistics.fmean(r["objective/scores"] for r in logs[:8])
    last = statistics.fmean(r["objective/scores"] for r in logs[-8:])
    assert last > first + 0.4, (first, last)
    assert figures["eval/reward_mean"] > figures["eval_before/reward_mean"]
    assert max(r["objective/kl"] for r in logs) < 30  # 12 tokens; β = 0.05 holds it


def test_telemetry_is_healthy(toy_run):
    out, _ = toy_run
    logs = step_logs(out)
    # the first mini-batch of every update sees an unchanged policy: its ratio is 1 (up to the rounding
    # between the sampling logits and a forward pass)
    assert all(r["val/ratio_min"] <= 1.0 + 1e-6 for r in logs)
    late = logs[10:]
    assert all(0.8 < r["val/ratio"] < 1.25 for r in late)
    assert statistics.fmean(r["policy/clipfrac_avg"] for r in late) < 0.3
    for name in ("objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward",
                 "objective/scores", "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg",
                 "loss/value_avg", "val/clipfrac_avg", "val/ratio", "eps", "time/generation_s",
                 "time/scoring_s", "time/training_s", "tokens_per_s"):
        assert name in logs[0], name
    # objective/rlhf_reward = scores - β·KL summed over tokens (k1)
    r = logs[5]
    assert r["objective/rlhf_reward"] == pytest.approx(r["objective/scores"] + r["objective/non_score_reward"])
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval/reward_mean" in r]
    assert [r["step"] for r in evals] == [10, 20, 30, 40, 50, 60]  # the last one once, from the final evaluation


def test_outputs_the_aligned_adapter_loadable_by_peft(toy_run, tiny_model_dir):
    from peft import AutoPeftModelForCausalLM

    out, _ = toy_run
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "samples.jsonl").exists()
    model = AutoPeftModelForCausalLM.from_pretrained(out / "adapter")
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] > 0
    sample = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert {"update", "prompt", "response", "score"} <= set(sample)
    from safetensors.torch import load_file

    assert set(load_file(out / "value_head.safetensors")) == {"weight", "bias"}


def test_nan_reward_stops_the_run_with_the_last_healthy_checkpoint(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    config = toy_config(tiny_model_dir, out, "ppo.updates=4", "reward.function=tests.ppo.toy_reward:nan_after_first_call",
                        "ppo.batch_size=8", "eval_every=0", "data.eval_prompts=null")
    with pytest.raises(TrainingHalted, match=r"update 2: the reward is not finite for 8 responses.*Checkpoint of update 1"):
        train(config)
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and "not finite" in status["error"]
    assert (out / "checkpoints" / "checkpoint-1" / "trainable.safetensors").exists()
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(out / "checkpoints" / "checkpoint-1" / "trainable.safetensors").values())


def test_resume_gives_the_same_next_update(tiny_model_dir, tmp_path):
    extra = ("ppo.updates=4", "save_every=2", "ppo.batch_size=8", "eval_every=0", "sample_every=0",
             "data.eval_prompts=null", "ppo.lr_scheduler=constant")
    train(toy_config(tiny_model_dir, tmp_path / "whole", *extra))
    train(toy_config(tiny_model_dir, tmp_path / "cut", *extra[1:], "ppo.updates=2"))
    (tmp_path / "cut" / "status.json").write_text('{"state": "failed"}')
    train(toy_config(tiny_model_dir, tmp_path / "cut", *extra), resume=True, allow_changes=True)  # 2 -> 4 updates
    whole, cut = step_logs(tmp_path / "whole"), step_logs(tmp_path / "cut")
    assert [r["step"] for r in cut] == [1, 2, 3, 4]
    for a, b in zip(whole[2:], cut[2:]):
        assert a["objective/scores"] == b["objective/scores"]
        assert a["loss/policy_avg"] == pytest.approx(b["loss/policy_avg"], rel=1e-5, abs=1e-7)


def test_ppo_ptx_adds_a_language_modelling_loss(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    train(toy_config(tiny_model_dir, out, "ppo.updates=2", "ppo.batch_size=8", "eval_every=0", "data.eval_prompts=null",
                     "ppo.ptx_coef=0.5", f"ppo.ptx_data={DEMO / 'sft.jsonl'}"))
    logs = step_logs(out)
    assert all(r["loss/ptx_avg"] > 0 for r in logs)
    # the tiny random model is far from the SFT text: cross-entropy near log(vocab)
    assert logs[0]["loss/ptx_avg"] > 2.0


def test_checkpoints_hold_both_adapters_after_an_eval_with_the_base_as_reference(tiny_model_dir, tmp_path):
    """peft's disable_adapter() leaves inactive adapters with requires_grad=False; a checkpoint
    chosen by requires_grad would silently drop the value adapter."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    train(toy_config(tiny_model_dir, out, "ppo.updates=2", "ppo.batch_size=8", "eval_every=2", "save_every=2",
                     "sample_every=0"))
    names = set(load_file(out / "checkpoints" / "checkpoint-2" / "trainable.safetensors"))
    assert any(".lora_A.policy." in n for n in names) and any(".lora_A.value." in n for n in names)
    assert {"value_head.weight", "value_head.bias"} <= names


def test_a_guard_trip_is_kept_apart_from_the_resume_point(tiny_model_dir, tmp_path):
    from align.core.rundir import StageDir

    out = tmp_path / "run"
    config = toy_config(tiny_model_dir, out, "ppo.updates=3", "ppo.batch_size=8", "eval_every=0",
                        "data.eval_prompts=null", "guards.max_ratio=1.0000001")
    with pytest.raises(TrainingHalted, match=r"update 1: policy ratio left .*lower ppo.learning_rate"):
        train(config)
    assert (out / "checkpoints" / "halted-update-1" / "trainable.safetensors").exists()
    assert StageDir(out).newest_checkpoint() is None
