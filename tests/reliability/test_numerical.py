"""Numerical faults: NaN and infinity in losses and rewards, runaway KL, a reward that is one
constant, and running out of memory. Each is found, the healthy state is saved where a run can
go on from it, and the run stops with a message that says what happened and what to change."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from click.testing import CliRunner

from align.cli import cli
from align.core import guards
from align.core.errors import OutOfMemory, TrainingHalted
from align.core.rundir import StageDir
from tests.reliability import stages


@pytest.fixture(scope="module")
def reward_data(tmp_path_factory):
    return stages.preference_file(tmp_path_factory.mktemp("data") / "prefs.jsonl")


def run(stage, tiny_model_dir, reward_data, out, *extra, **kwargs):
    return stages.run_in_process(stage, tiny_model_dir, reward_data, out, *extra, **kwargs)


def finite_weights(checkpoint) -> bool:
    from safetensors.torch import load_file

    name = "trainable.safetensors" if (checkpoint / "trainable.safetensors").exists() else "adapter_model.safetensors"
    return all(torch.isfinite(t).all() for t in load_file(checkpoint / name).values())


def failed_with(out, text: str) -> None:
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and text in status["error"], status


# ---------------------------------------------------------------- NaN and infinity

def test_reward_model_nan_loss_stops_with_the_last_healthy_step_saved(tiny_model_dir, reward_data, tmp_path, monkeypatch):
    import align.reward.micro_batches

    real, real_backward, batches = align.reward.micro_batches.kwise_ranking_loss, align.reward.micro_batches.backward, []

    def counted(*args, **kwargs):  # one batch a step here (grad_accum 1), however many micro-batches
        batches.append(1)
        return real_backward(*args, **kwargs)

    def nan_from_the_fifth(*args, **kwargs):
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(batches) >= 5 else loss

    monkeypatch.setattr(align.reward.micro_batches, "backward", counted)
    monkeypatch.setattr(align.reward.micro_batches, "kwise_ranking_loss", nan_from_the_fifth)
    out = tmp_path / "run"
    with pytest.raises(TrainingHalted, match=r"stopped at step 5: the loss or its gradient is not finite.*"
                                             r"state after step 4 is in .*checkpoint-4"):
        run("reward", tiny_model_dir, reward_data, out)
    failed_with(out, "not finite")
    checkpoint = StageDir(out).newest_checkpoint()
    assert checkpoint.name == "checkpoint-4" and finite_weights(checkpoint)
    # the saved state is the one before the bad step: with the fault gone, --resume finishes the run
    monkeypatch.setattr(align.reward.micro_batches, "kwise_ranking_loss", real)
    figures = run("reward", tiny_model_dir, reward_data, out, resume=True)
    assert figures["train/steps"] == stages.STEPS["reward"] and math.isfinite(figures["eval/margin"])


def test_sft_nan_loss_stops_before_the_weights_turn_nan(tiny_model_dir, reward_data, tmp_path, monkeypatch):
    import trl

    real = trl.SFTTrainer.compute_loss

    def nan_from_the_sixth(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        if not self.model.training or self.state.global_step < 5:  # evaluation calls it too
            return result
        return (result[0] * float("nan"), *result[1:]) if isinstance(result, tuple) else result * float("nan")

    monkeypatch.setattr(trl.SFTTrainer, "compute_loss", nan_from_the_sixth)
    out = tmp_path / "run"
    with pytest.raises(TrainingHalted, match=r"SFT stopped at step 6: the gradient of .* is not finite.*"
                                             r"state after step 5 is in .*checkpoint-5"):
        run("sft", tiny_model_dir, reward_data, out)
    failed_with(out, "not finite")
    checkpoint = StageDir(out).newest_checkpoint()
    assert checkpoint.name == "checkpoint-5" and finite_weights(checkpoint)
    assert [r["step"] for r in stages.step_records(out)] == [1, 2, 3, 4, 5]


def test_dpo_nan_loss_stops_with_a_resumable_checkpoint(tiny_model_dir, reward_data, tmp_path, monkeypatch):
    import trl

    from align.core.config import load_config
    from align.prefs.config import DPOConfig
    from align.prefs.train import dpo

    real = trl.DPOTrainer.compute_loss

    def nan_from_the_third(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        if not self.model.training or self.state.global_step < 2:
            return result
        return (result[0] * float("nan"), *result[1:]) if isinstance(result, tuple) else result * float("nan")

    monkeypatch.setattr(trl.DPOTrainer, "compute_loss", nan_from_the_third)
    out = tmp_path / "run"
    config = load_config(DPOConfig, None, [
        f"out_dir={out}", f"model.name={tiny_model_dir}", f"data.train={reward_data}", "model.quantization=none",
        "model.lora.r=4", "training.max_steps=6", "training.batch_size=4", "training.max_length=64",
        "data.eval_fraction=0", "tracking.wandb=false", "tracking.logging_steps=1"])
    with stages.one_thread(), pytest.raises(TrainingHalted, match=r"DPO stopped at step 3: the gradient .* not finite.*"
                                                                  r"state after step 2 is in .*checkpoint-2"):
        dpo(config)
    failed_with(out, "not finite")
    assert StageDir(out).newest_checkpoint().name == "checkpoint-2" and finite_weights(out / "checkpoints" / "checkpoint-2")


def test_ppo_infinite_reward_stops_before_the_update(tiny_model_dir, reward_data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingHalted, match=r"PPO stopped at update 1: the reward is not finite for 8 responses"):
        run("ppo", tiny_model_dir, reward_data, out, "reward.function=tests.reliability.faulty_rewards:infinite")
    failed_with(out, "not finite")
    assert finite_weights(out / "checkpoints" / "checkpoint-0")


# ---------------------------------------------------------------- KL runaway, constant rewards

def test_ppo_kl_runaway_stops_with_its_state_kept_apart(tiny_model_dir, reward_data, tmp_path):
    out = tmp_path / "run"
    # the policy starts as the reference (LoRA B = 0), so update 1 has KL 0 and the first update moves it;
    # exactly 0 with log π_old from a pass like the reference's (the sampling logits differ by rounding)
    with pytest.raises(TrainingHalted, match=r"PPO stopped at update 2: objective/kl .* above guards.max_kl=1e-06"):
        run("ppo", tiny_model_dir, reward_data, out, "guards.max_kl=1e-6", "generation.logprobs_from_sampling=false")
    failed_with(out, "guards.max_kl")
    assert (out / "checkpoints" / "halted-update-2" / "trainable.safetensors").exists()
    kl = [r["objective/kl"] for r in stages.step_records(out)]
    assert kl[0] == pytest.approx(0, abs=1e-6) and kl[1] > 1e-6


def test_ppo_constant_reward_stops_after_the_set_number_of_updates(tiny_model_dir, reward_data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingHalted, match=r"PPO stopped at update 3: the reward gave all 8 responses the same score "
                                             r"\(0.25\) in 3 rollouts in a row"):
        run("ppo", tiny_model_dir, reward_data, out, "reward.function=tests.reliability.faulty_rewards:constant")
    failed_with(out, "same score")
    assert (out / "checkpoints" / "halted-update-3" / "trainable.safetensors").exists()
    # and a varying reward is not stopped: guards.constant_reward_updates=0 turns the check off
    run("ppo", tiny_model_dir, reward_data, tmp_path / "off", "reward.function=tests.reliability.faulty_rewards:constant",
        "guards.constant_reward_updates=0", "training.updates=4")
    assert StageDir(tmp_path / "off").state() == "done"


def test_constant_reward_counts_only_consecutive_rollouts():
    check = guards.ConstantReward(limit=2)
    assert check.update([1.0, 1.0]) is None
    assert check.update([1.0, 2.0]) is None  # a varying rollout resets the count
    assert check.update([3.0, 3.0 + 1e-9]) is None  # float noise is still constant
    assert "2 rollouts in a row" in check.update([3.0, 3.0])
    assert guards.ConstantReward(limit=0).update([1.0, 1.0]) is None


def test_a_reward_model_that_collapsed_to_a_constant_stops_the_reward_stage(tiny_model_dir, reward_data, tmp_path,
                                                                             monkeypatch):
    import align.reward.train

    # a head that learnt to ignore its input: every completion gets the same reward
    monkeypatch.setattr(align.reward.train, "score_texts", lambda model, tokenizer, texts, *a, **k: torch.full((len(texts),), 0.5))
    out = tmp_path / "run"
    with pytest.raises(TrainingHalted, match=r"gives every reference completion the same reward \(0.5\) after 14 steps"):
        run("reward", tiny_model_dir, reward_data, out)
    failed_with(out, "collapsed")
    assert StageDir(out).newest_checkpoint().name == "checkpoint-14"
    assert not (out / "adapter").exists()  # no reward model for PPO to pick up


# ---------------------------------------------------------------- out of memory

OOM_ERRORS = {
    "torch.OutOfMemoryError": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    "RuntimeError": lambda: RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total)"),
    "MemoryError": lambda: MemoryError(),
    "CPU allocator": lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:116] DefaultCPUAllocator: can't allocate memory"),
}

OOM_CASES = [
    # (stage, where the error is raised, error, settings the message must name with their values)
    ("sft", "trl:SFTTrainer.training_step", "torch.OutOfMemoryError",
     ["training.batch_size (now 4)", "training.max_length (now 48)", "training.grad_accum (now 1)",
      "training.gradient_checkpointing=true (now false)"]),
    ("reward", "align.reward.micro_batches:kwise_ranking_loss", "RuntimeError",
     ["training.batch_size (now 4)", "data.max_length (now 64)", "training.eval_batch_size (now 16)",
      "training.grad_accum (now 1)"]),
    ("ppo", "align.ppo.train:PPOTrainer.optimise", "MemoryError",
     ["training.mini_batch_size (now 4)", "generation.max_new_tokens (now 8)", "data.max_prompt_length (now 256)",
      "training.grad_accum (now 1)"]),
    ("reward", "align.reward.train:score_texts", "CPU allocator", ["training.eval_batch_size (now 16)"]),
]


@pytest.mark.parametrize(("stage", "target", "error", "settings"), OOM_CASES, ids=[f"{c[0]}-{c[2]}" for c in OOM_CASES])
def test_out_of_memory_names_the_settings_to_lower(stage, target, error, settings, tiny_model_dir, reward_data, tmp_path,
                                                   monkeypatch):
    module, _, attribute = target.partition(":")
    owner = __import__(module, fromlist=["_"])
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)

    def out_of_memory(*args, **kwargs):
        raise OOM_ERRORS[error]()

    monkeypatch.setattr(owner, name, out_of_memory)
    monkeypatch.chdir(stages.ROOT)
    out = tmp_path / "run"
    with stages.one_thread():
        result = CliRunner().invoke(cli, stages.argv(stage, tiny_model_dir, reward_data, out)[3:])
    assert result.exit_code == 2, result.output
    errors = re.findall(r"error: [^\n]*", result.output)  # progress bars leave no newline before it
    assert len(errors) == 1 and "Traceback" not in result.output, result.output[-2000:]
    message = errors[0]
    assert "ran out of memory" in message
    for setting in settings:
        assert setting in message, (setting, message)
    failed_with(out, "OutOfMemory: ")


def test_other_errors_are_not_taken_for_out_of_memory():
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with guards.explain_out_of_memory("SFT", "lower x"):
            raise RuntimeError("shape mismatch")
    with pytest.raises(OutOfMemory, match=r"SFT ran out of memory \(OutOfMemoryError: CUDA out of memory"):
        with guards.explain_out_of_memory("SFT", "lower x"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")


# ---------------------------------------------------------------- non-finite weights: never a resume point

def nan_weights_after_each_step(monkeypatch) -> None:
    """An optimiser step that leaves a weight NaN (as an overflowing update or a faulty kernel would)
    although the loss and gradient before it were finite."""
    real = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        self.param_groups[0]["params"][0].data.fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step)


@pytest.mark.parametrize(("stage", "first", "then", "newest"), [
    ("sft", ["training.save_steps=1", "training.max_steps=2"], ["training.save_steps=1", "training.max_steps=4"], 2),
    ("reward", [], [], 12),  # 14 steps, a checkpoint every 3
])
def test_non_finite_weights_are_never_named_as_the_resume_point(stage, first, then, newest, tiny_model_dir,
                                                                reward_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(stage, tiny_model_dir, reward_data, out, *first)
    status = json.loads((out / "status.json").read_text())
    (out / "status.json").write_text(json.dumps({**status, "state": "failed"}))
    (out / "metrics.json").unlink()
    nan_weights_after_each_step(monkeypatch)
    with pytest.raises(TrainingHalted, match=rf"not saved; `--resume` continues from .*checkpoint-{newest}, the newest"):
        run(stage, tiny_model_dir, reward_data, out, *then, resume=True, allow_changes=bool(then))
    checkpoint = StageDir(out).newest_checkpoint()
    assert checkpoint.name == f"checkpoint-{newest}" and finite_weights(checkpoint)


@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_non_finite_weights_in_the_first_step_leave_no_checkpoint(stage, tiny_model_dir, reward_data, tmp_path,
                                                                   monkeypatch):
    nan_weights_after_each_step(monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(TrainingHalted, match="no checkpoint was saved before it: start again with --overwrite"):
        run(stage, tiny_model_dir, reward_data, out, "training.save_steps=1")
    assert StageDir(out).newest_checkpoint() is None
