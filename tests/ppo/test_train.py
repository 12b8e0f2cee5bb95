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
        "training.batch_size=16", "training.mini_batch_size=8", "training.learning_rate=1e-3", "generation.max_new_tokens=12",
        "tracking.wandb=false", "training.eval_steps=10", "training.sample_steps=20", "training.save_steps=20", *extra,
    ])


def step_logs(out):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "objective/scores" in r]


@pytest.fixture(scope="module")
def toy_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo") / "run"
    # a judge that is not the reward: its figure is its own
    return out, train(toy_config(tiny_model_dir, out, "training.updates=60", "data.eval_judge=tests.ppo.toy_reward:half"))


def test_the_gold_judge_scores_the_held_out_answers_beside_the_reward(toy_run):
    out, final = toy_run
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval/judge_mean" in r]
    assert len(evals) == 6  # every eval_steps=10 updates, the last one included
    assert all(r["eval/judge_mean"] == 0.5 for r in evals) and final["eval_before/judge_mean"] == 0.5
    assert {r["eval/reward_mean"] for r in evals} != {0.5}  # the proxy is the digit count, not the judge


def test_known_reward_rises_and_kl_stays_bounded(toy_run):
    out, figures = toy_run
    logs = step_logs(out)
    assert len(logs) == 60
    first = statistics.fmean(r["objective/scores"] for r in logs[:8])
    last = statistics.fmean(r["objective/scores"] for r in logs[-8:])
    assert last > first + 0.4, (first, last)
    assert figures["eval/reward_mean"] > figures["eval_before/reward_mean"]
    # β = 0.05 holds the KL: the penalised reward rises too, and the KL stays within bounds (12 tokens; the largest
    # update's KL was 26 with transformers' sampler and 40-42 with ours, whose draws took the reward higher faster)
    penalised = [r["objective/rlhf_reward"] for r in logs]
    assert statistics.fmean(penalised[-8:]) > statistics.fmean(penalised[:8]) + 0.4
    assert max(r["objective/kl"] for r in logs) < 60


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
    from safetensors.torch import load_file

    out, _ = toy_run
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "samples.jsonl").exists()
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    card = (out / "adapter" / "README.md").read_text()
    assert card.startswith(f"---\nbase_model: {tiny_model_dir}\n") and '"ppo"' in card and "`eval/kl`" in card
    model = AutoPeftModelForCausalLM.from_pretrained(out / "adapter")
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] > 0
    from align.core import modeling
    from align.ppo.models import PolicyStack

    # it is the trained policy: the logits of the policy adapter of the last checkpoint (taken after the
    # last update), not those of the value adapter nor of the base
    stack = PolicyStack(toy_config(tiny_model_dir, out).model, modeling.load_tokenizer(str(tiny_model_dir)), None)
    with torch.no_grad():
        for name, tensor in load_file(out / "checkpoints" / "checkpoint-60" / "trainable.safetensors").items():
            stack.named_trainable()[name].copy_(tensor)
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    with torch.no_grad():
        loaded = model(input_ids=ids).logits[0, :-1]  # (5, V): what predicts tokens 2..6
        policy, value, base = (stack.policy_logits(ids, torch.ones_like(ids), ids.shape[1] - 1, adapter=a)[0]
                               for a in ("policy", "value", "ref"))
    torch.testing.assert_close(loaded, policy, atol=1e-4, rtol=0)
    assert (loaded - value).abs().max() > 1e-2 and (loaded - base).abs().max() > 1e-2
    sample = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert {"update", "prompt", "response", "score"} <= set(sample)
    assert set(load_file(out / "value_head.safetensors")) == {"weight", "bias"}


def test_nan_reward_stops_the_run_with_the_last_healthy_checkpoint(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    config = toy_config(tiny_model_dir, out, "training.updates=4", "reward.function=tests.ppo.toy_reward:nan_after_first_call",
                        "training.batch_size=8", "training.eval_steps=0", "data.eval_prompts=null")
    with pytest.raises(TrainingHalted, match=r"update 2: the reward is not finite for 8 responses.*Checkpoint of update 1"):
        train(config)
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and "not finite" in status["error"]
    assert (out / "checkpoints" / "checkpoint-1" / "trainable.safetensors").exists()
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(out / "checkpoints" / "checkpoint-1" / "trainable.safetensors").values())


def test_resume_gives_the_same_next_update(tiny_model_dir, tmp_path):
    extra = ("training.updates=4", "training.save_steps=2", "training.batch_size=8", "training.eval_steps=0", "training.sample_steps=0",
             "data.eval_prompts=null", "training.lr_scheduler=constant")
    train(toy_config(tiny_model_dir, tmp_path / "whole", *extra))
    train(toy_config(tiny_model_dir, tmp_path / "cut", *extra[1:], "training.updates=2"))
    (tmp_path / "cut" / "status.json").write_text('{"state": "failed"}')
    train(toy_config(tiny_model_dir, tmp_path / "cut", *extra), resume=True, allow_changes=True)  # 2 -> 4 updates
    whole, cut = step_logs(tmp_path / "whole"), step_logs(tmp_path / "cut")
    assert [r["step"] for r in cut] == [1, 2, 3, 4]
    for a, b in zip(whole[2:], cut[2:]):
        assert a["objective/scores"] == b["objective/scores"]
        assert a["loss/policy_avg"] == pytest.approx(b["loss/policy_avg"], rel=1e-5, abs=1e-7)


def test_ppo_ptx_adds_a_language_modelling_loss(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    train(toy_config(tiny_model_dir, out, "training.updates=2", "training.batch_size=8", "training.eval_steps=0", "data.eval_prompts=null",
                     "training.ptx_coef=0.5", f"training.ptx_data={DEMO / 'sft.jsonl'}"))
    logs = step_logs(out)
    assert all(r["loss/ptx_avg"] > 0 for r in logs)
    # the tiny random model is far from the SFT text: cross-entropy near log(vocab)
    assert logs[0]["loss/ptx_avg"] > 2.0


def test_checkpoints_hold_both_adapters_after_an_eval_with_the_base_as_reference(tiny_model_dir, tmp_path):
    """peft's disable_adapter() leaves inactive adapters with requires_grad=False; a checkpoint
    chosen by requires_grad would silently drop the value adapter."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    train(toy_config(tiny_model_dir, out, "training.updates=2", "training.batch_size=8", "training.eval_steps=2", "training.save_steps=2",
                     "training.sample_steps=0"))
    names = set(load_file(out / "checkpoints" / "checkpoint-2" / "trainable.safetensors"))
    assert any(".lora_A.policy." in n for n in names) and any(".lora_A.value." in n for n in names)
    assert {"value_head.weight", "value_head.bias"} <= names


def test_a_guard_trip_is_kept_apart_from_the_resume_point(tiny_model_dir, tmp_path):
    from align.core.rundir import StageDir

    out = tmp_path / "run"
    config = toy_config(tiny_model_dir, out, "training.updates=3", "training.batch_size=8", "training.eval_steps=0",
                        "data.eval_prompts=null", "guards.max_ratio=1.0000001")
    with pytest.raises(TrainingHalted, match=r"update 1: policy ratio left .*lower training.learning_rate"):
        train(config)
    assert (out / "checkpoints" / "halted-update-1" / "trainable.safetensors").exists()
    assert StageDir(out).newest_checkpoint() is None


# ---------------------------------------------------------------- one update, watched by spies


@pytest.fixture
def trainer(tiny_model_dir, tmp_path):
    """A PPOTrainer outside `train`: 8 prompts an update, 2 mini-batches of 4, one epoch, 4 updates,
    sampling (and every log-prob) at temperature 0.7."""
    from align.core.rundir import StageDir
    from align.ppo.train import PPOTrainer

    out = tmp_path / "run"
    out.mkdir()
    config = toy_config(tiny_model_dir, out, "training.batch_size=8", "training.mini_batch_size=4", "training.ppo_epochs=1",
                        "training.grad_accum=1", "training.updates=4", "training.lr_scheduler=linear", "training.kl_estimator=k1",
                        "training.adaptive_kl=false", "training.kl_coef=0.05", "training.whiten_rewards=false",
                        "generation.temperature=0.7", "data.eval_prompts=null", "training.eval_steps=0")
    return PPOTrainer(config, StageDir(out))


def demo_prompts(n=8):
    from align.core.records import load_records

    return load_records(DEMO / "prompts.jsonl", "prompts")[:n]


def move_off_the_start(trainer):
    """The policy starts as the reference (LoRA B = 0) and the value head at 0: random B and head weights
    give the policy log-probs of its own and the values something to add to the advantages."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in trainer.stack.named_trainable().items():
            if ".lora_B.policy." in name or name.startswith("value_head."):
                param.normal_(0, 0.05)


def record_calls(monkeypatch, owner, name):
    """Wrap owner.name so each call's arguments are kept; returns the list of (args, kwargs)."""
    calls, real = [], getattr(owner, name)

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


def test_the_update_trains_on_whitened_gae_of_kl_shaped_rewards(trainer, monkeypatch):
    """Worked from the rollout by hand: r_t = −β·(log π_old − log π_ref) on every response token plus the
    score at the last, GAE on those, then the advantages whitened over the response mask."""
    from align.ppo import advantages as adv

    move_off_the_start(trainer)
    shaped = record_calls(monkeypatch, adv, "shaped_rewards")
    optimised = record_calls(monkeypatch, trainer, "optimise")
    stats, rollout = trainer.step(demo_prompts(), 0)
    (_, advantages, returns, _), _ = optimised[0]
    mask = rollout.response_mask.float()
    p, beta = trainer.config.training, 0.05

    # whitened: mean 0 and (Bessel-corrected, as TRL) variance 1 over the real tokens, 0 on padding
    n = mask.sum()
    mean = (advantages * mask).sum() / n
    assert mean.item() == pytest.approx(0.0, abs=1e-6)
    assert (((advantages - mean) ** 2 * mask).sum() / (n - 1)).item() == pytest.approx(1.0, abs=1e-5)
    assert (advantages[mask == 0] == 0).all()

    kl = (rollout.logprobs - rollout.ref_logprobs) * mask  # k1
    assert kl.abs().sum() > 0.1 and rollout.values.abs().sum() > 0.1  # neither term is 0
    rewards = -beta * kl
    rewards[torch.arange(len(rewards)), mask.sum(1).long() - 1] += rollout.scores
    # the sign of the KL term where `step` shapes the rewards: a positive KL lowers the reward
    (scores, kl_given, _, beta_given), _ = shaped[0]
    assert beta_given == beta and torch.equal(scores, rollout.scores)
    assert torch.allclose(kl_given, kl, atol=1e-7)
    torch.testing.assert_close(adv.shaped_rewards(scores, kl_given, mask, beta_given), rewards, atol=1e-7, rtol=0)
    want_advantages, want_returns = adv.gae(rewards, rollout.values, mask, p.gamma, p.lam)
    torch.testing.assert_close(returns, want_returns, atol=1e-6, rtol=0)
    torch.testing.assert_close(advantages, adv.whiten(want_advantages, mask), atol=1e-5, rtol=0)
    assert stats["objective/non_score_reward"] == pytest.approx((-beta * kl).sum(1).mean().item(), abs=1e-6)


def test_each_mini_batch_clips_against_the_old_policy_and_fits_the_returns_from_zeroed_gradients(trainer, monkeypatch):
    """Inside optimise: the ratio is π_θ / π_old (not / π_ref), the value target is the returns (not the
    advantages), and each mini-batch's gradient starts from zero (no sum over earlier mini-batches)."""
    import align.ppo.train as ppo_train
    from align.ppo.batches import unpadded_columns

    move_off_the_start(trainer)
    params = trainer.stack.trainable_parameters()
    micro_steps = []
    real_micro_step = type(trainer)._micro_step

    def micro_step(self, rollout, advantages, returns, rows, n_tokens, lengths):
        fresh = all(q.grad is None or not q.grad.any() for q in params)
        micro_steps.append((rollout, advantages, returns, rows, lengths, fresh))
        return real_micro_step(self, rollout, advantages, returns, rows, n_tokens, lengths)

    monkeypatch.setattr(type(trainer), "_micro_step", micro_step)
    policy_calls = record_calls(monkeypatch, ppo_train, "policy_loss")
    value_calls = record_calls(monkeypatch, ppo_train, "value_loss")
    optimiser_steps = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: optimiser_steps.append(sum(q.grad.abs().sum().item() for q in params if q.grad is not None)))
    trainer.step(demo_prompts(), 0)

    assert len(micro_steps) == len(policy_calls) == len(value_calls) == 2  # 8 rollouts, 2 mini-batches of 4
    assert all(g > 0 for g in optimiser_steps) and len(optimiser_steps) == 2
    for (rollout, advantages, returns, rows, lengths, fresh), (pg, _), (vf, _) in zip(micro_steps, policy_calls, value_calls):
        assert fresh  # optimizer.zero_grad after every step
        resp = unpadded_columns(*lengths, rows, rollout.query_ids.shape[1])[1]
        old, ref = rollout.logprobs[rows, resp], rollout.ref_logprobs[rows, resp]
        assert not torch.allclose(old, ref, atol=1e-3)  # so a ratio against π_ref would show
        _, old_given, advantages_given, _, _ = pg
        assert torch.equal(old_given, old) and torch.equal(advantages_given, advantages[rows, resp])
        _, old_values, target, _, _ = vf
        assert not torch.allclose(returns[rows, resp], advantages[rows, resp], atol=1e-3)
        assert torch.equal(old_values, rollout.values[rows, resp]) and torch.equal(target, returns[rows, resp])


def test_the_learning_rate_decays_linearly_update_by_update(trainer):
    # training.learning_rate 1e-3, 4 updates, linear: update u steps at 1e-3 · (1 − u/4) on both of its mini-batches;
    # `lr` is logged after the scheduler's step, so it is the rate the next update will use
    used = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    logged = [trainer.step(demo_prompts(), u)[0]["lr"] for u in range(3)]
    assert used == pytest.approx([1e-3, 1e-3, 7.5e-4, 7.5e-4, 5e-4, 5e-4], rel=1e-9)
    assert logged == pytest.approx([7.5e-4, 5e-4, 2.5e-4], rel=1e-9)


def test_reference_log_probs_of_the_held_out_answers_use_the_sampling_temperature(trainer):
    """While the policy is the reference (LoRA B = 0) the held-out answers' KL to it is 0, at any
    temperature, if both log-probs are taken at that temperature."""
    from align.core.records import load_records

    prompts = load_records(DEMO / "heldout.jsonl", "prompts")[:4]
    figures = trainer.evaluate(prompts)
    assert figures["kl"] == pytest.approx(0.0, abs=1e-5)
    assert figures["response_length"] > 0


def test_the_over_optimisation_chart_reads_every_held_out_evaluation(toy_run, tmp_path):
    from align.eval import plots

    out, final = toy_run
    points = plots.kl_points(out)
    assert len(points) == 7  # before training, and the 6 in-loop evaluations
    assert [p[0] for p in points] == sorted(p[0] for p in points)
    assert (final["eval_before/kl"], final["eval_before/judge_mean"], final["eval_before/reward_mean"]) in points
    assert all(judge == 0.5 for _, judge, _ in points)
    logged = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval/kl" in r]
    assert sorted((p[0], p[2]) for p in points) == sorted(
        [(r["eval/kl"], r["eval/reward_mean"]) for r in logged] + [(final["eval_before/kl"], final["eval_before/reward_mean"])])
    chart = plots.overoptimisation({"toy": out, "again": out}, tmp_path / "over.png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "eval/kl": 0.5, "eval/reward_mean": 1.0}) + "\n")
    assert plots.overoptimisation({"no judge": tmp_path}, tmp_path / "none.png") is None
