"""Reward-model ensembles: the objectives, K members trained in one run on one base, loading and resuming."""

from __future__ import annotations

import json

import pytest
import torch

from align.core.config import load_config
from align.core.errors import AlignError
from align.reward import members
from align.reward.config import RewardConfig
from align.reward.ensemble import combine, disagreement
from align.reward.score import RewardModel, conversation_text
from align.reward.train import train
from tests.reward.test_train import separable_preferences

SCORES = torch.tensor([[1.0, -2.0, 0.5],
                       [3.0, -1.0, 0.5],
                       [2.0, 0.0, 0.5]])  # (K=3 members, N=3 completions)


def test_the_objectives_against_hand_computed_values():
    # column 0: mean 2, population std sqrt(2/3); column 1: mean -1, std sqrt(2/3); column 2: all agree
    std = (2 / 3) ** 0.5
    assert disagreement(SCORES).tolist() == pytest.approx([std, std, 0.0])
    assert combine(SCORES, "mean").tolist() == pytest.approx([2.0, -1.0, 0.5])
    assert combine(SCORES, "uwo", uwo_lambda=0.5).tolist() == pytest.approx([2.0 - 0.5 * std, -1.0 - 0.5 * std, 0.5])
    assert combine(SCORES, "wco").tolist() == pytest.approx([1.0, -2.0, 0.5])
    with pytest.raises(ValueError, match="unknown ensemble objective 'max'"):
        combine(SCORES, "max")


def test_one_member_is_its_own_score_under_every_objective():
    one = SCORES[:1]
    for objective in ("mean", "uwo", "wco"):
        assert torch.equal(combine(one, objective, uwo_lambda=3.0), one[0])


def reward_config(tiny_model_dir, root, out, *extra):
    return load_config(RewardConfig, None, [
        f"out_dir={root / out}", f"model.name={tiny_model_dir}", f"data.train={root / 'train.jsonl'}",
        f"data.eval={root / 'eval.jsonl'}", "model.quantization=none", "training.batch_size=8",
        "training.learning_rate=3e-3", "training.lr_scheduler=constant", "training.epochs=2", "model.lora.r=8", "model.lora.dropout=0",
        "tracking.wandb=false", "tracking.logging_steps=1", *extra])


@pytest.fixture(scope="module")
def ensemble_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in separable_preferences(64, seed=1)))
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in separable_preferences(24, seed=2)))
    figures = train(reward_config(tiny_model_dir, root, "ens", "training.ensemble=2", "training.save_steps=3"))
    return root, figures


def test_each_member_learns_and_the_ensemble_reports_accuracy_and_disagreement(ensemble_run):
    root, figures = ensemble_run
    dirs = members.member_dirs(root / "ens")
    assert [d.name for d in dirs] == ["member-0", "member-1"]
    assert members.member_dirs(root / "ens" / "ensemble") == dirs
    assert members.member_dirs(dirs[0]) is None  # a member's own folder is one reward model
    # a stage directory may itself be called `ensemble`
    (root / "ensemble").symlink_to(root / "ens", target_is_directory=True)
    assert [d.name for d in members.member_dirs(root / "ensemble")] == ["member-0", "member-1"]
    members.check(root / "ensemble")
    assert not (root / "ens" / "adapter").exists()
    for k in range(2):
        assert figures[f"member{k}/eval/accuracy"] > 0.85
        assert figures[f"member{k}/train/steps"] == 16
        assert (dirs[k] / "normaliser.json").is_file() and (dirs[k] / "eval_rewards.json").is_file()
    assert figures["eval/accuracy"] > 0.85 and figures["eval/members"] == 2
    # seeds differ, so the members do: they disagree somewhere, in normalised units
    assert figures["eval/disagreement"] > 1e-3
    steps = [json.loads(line) for line in (root / "ens" / "metrics.jsonl").read_text().splitlines()]
    logged = [(e["step"], e.get("train/member")) for e in steps if "train/loss" in e]
    assert logged == [(s, 0) for s in range(1, 17)] + [(s, 1) for s in range(17, 33)]


def test_the_ensemble_scores_by_its_objective_over_its_members_normalised_scores(ensemble_run):
    root, _ = ensemble_run
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}]] * 3
    answers = ["2 + 3 = 5.", "2 + 3 = 6. Also, well", "5"]
    singles = [RewardModel.load(d) for d in members.member_dirs(root / "ens")]
    normalised = torch.stack([m.normaliser(m.score(prompts, answers)) for m in singles])  # (2, 3)
    ensemble = members.load(root / "ens", "uwo", uwo_lambda=2.0)
    assert isinstance(ensemble, members.RewardEnsemble)
    got = ensemble.score(prompts, answers)
    expected = normalised.mean(0) - 2.0 * normalised.std(0, correction=0)
    assert got.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert ensemble.normaliser(got).tolist() == got.tolist()  # already normalised
    assert members.load(root / "ens", "wco").score(prompts, answers).tolist() == pytest.approx(
        normalised.min(0).values.tolist(), abs=1e-5)


def test_a_one_member_ensemble_equals_the_single_reward_model(ensemble_run, tiny_model_dir):
    """Member 0 is trained as a single model with the same seed would be: the same weights, the same scores."""
    root, figures = ensemble_run
    single = train(reward_config(tiny_model_dir, root, "single"))
    assert single["eval/accuracy"] == pytest.approx(figures["member0/eval/accuracy"])
    prompts = [[{"role": "user", "content": "What is 4 + 4?"}]] * 2
    answers = ["4 + 4 = 8.", "4 + 4 = 9. Anyway"]
    alone = RewardModel.load(root / "single")
    one = members.RewardEnsemble.load(members.member_dirs(root / "ens")[:1])
    assert one.score(prompts, answers).tolist() == pytest.approx(
        alone.normaliser(alone.score(prompts, answers)).tolist(), abs=1e-6)


def test_resume_with_an_ensemble_reproduces_the_uninterrupted_run(ensemble_run, tiny_model_dir, monkeypatch):
    import align.reward.train as stage

    root, whole = ensemble_run
    learn = stage._learn_from

    def killed_at_step_23(groups, learner, out, state, *args):
        if state["step"] == 22:  # the second member's 6th step; the newest checkpoint is step 21, its 5th
            raise KeyboardInterrupt
        return learn(groups, learner, out, state, *args)

    config = reward_config(tiny_model_dir, root, "cut", "training.ensemble=2", "training.save_steps=3")
    monkeypatch.setattr(stage, "_learn_from", killed_at_step_23)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    assert members.read_member(root / "cut", 0) is not None and members.read_member(root / "cut", 1) is None
    first_member = (members.member_dir(root / "cut", 0) / "adapter_model.safetensors").stat().st_mtime_ns
    batches = []

    def counted(groups, learner, out, state, *args):
        batches.append(state["step"])
        return learn(groups, learner, out, state, *args)

    monkeypatch.setattr(stage, "_learn_from", counted)
    resumed = train(config, resume=True)
    # the finished member is read back, not trained again; the second goes on after its checkpoint at step 21
    assert (members.member_dir(root / "cut", 0) / "adapter_model.safetensors").stat().st_mtime_ns == first_member
    assert batches == list(range(21, 32))
    logged = [json.loads(line)["step"] for line in (root / "cut" / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in line]
    assert logged == list(range(1, 33))  # the steps after the checkpoint logged once, by the resumed run
    for key in ("eval/accuracy", "eval/margin", "eval/disagreement", "member0/eval/margin", "member1/eval/margin"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-5), key
    from safetensors.torch import load_file

    for k in range(2):
        a = load_file(members.member_dir(root / "cut", k) / "adapter_model.safetensors")
        b = load_file(members.member_dir(root / "ens", k) / "adapter_model.safetensors")
        assert max((a[n] - b[n]).abs().max().item() for n in a) < 1e-6


def test_ppo_trains_on_the_ensembles_objective_and_logs_each_member(ensemble_run, tiny_model_dir, tmp_path):
    from align.ppo.config import PPOConfig
    from align.ppo.train import train as train_ppo
    from tests.conftest import DEMO

    root, _ = ensemble_run
    config = load_config(PPOConfig, None, [
        f"out_dir={tmp_path / 'ppo'}", f"model.name={tiny_model_dir}", "model.quantization=none", "model.lora.r=8",
        f"reward.model={root / 'ens'}", "reward.ensemble_objective=uwo", "reward.uwo_lambda=0.5",
        "reward.no_eos_penalty=null", f"data.prompts={DEMO / 'prompts.jsonl'}", "data.eval_prompts=null",
        "training.batch_size=8", "training.mini_batch_size=8", "training.updates=2", "generation.max_new_tokens=8",
        "tracking.wandb=false"])
    train_ppo(config)
    logs = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in logs if "objective/scores" in e]
    assert len(steps) == 2
    for e in steps:
        members_mean = (e["objective/member0_scores"] + e["objective/member1_scores"]) / 2
        assert e["objective/reward_disagreement"] > 0
        # uwo is linear in the members' mean and std, so its batch mean is theirs: mean - λ x mean std
        assert e["objective/scores"] == pytest.approx(members_mean - 0.5 * e["objective/reward_disagreement"], abs=1e-5)


def test_the_ensemble_on_the_policys_shared_base_scores_as_it_does_on_its_own(ensemble_run, tiny_model_dir):
    """Each member's adapter and head on PPO's base, reading the rollout's token ids, gives the standalone
    ensemble's reward of the same tokens under the objective; its members' scores are kept for the logs."""
    from align.core import modeling
    from align.ppo.models import REWARD, PolicyStack
    from align.ppo.rollout import Sampling, make_rollout, shared_base_scorer
    from tests.ppo.test_rollout import prompts_and_queries, right_padded_rows

    root, _ = ensemble_run
    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    stack = PolicyStack(modeling.ModelConfig(name=str(tiny_model_dir), quantization="none"), tokenizer,
                        str(root / "ens"), ensemble_objective="uwo", uwo_lambda=0.7)
    assert stack.shares_reward and set(stack.peft.peft_config) >= {REWARD, f"{REWARD}-1"}
    assert not any(p.requires_grad for n, p in stack.peft.named_parameters() if f".{REWARD}-1." in n)
    prompts, ids, mask = prompts_and_queries(tokenizer)
    torch.manual_seed(1)
    score = shared_base_scorer(stack)
    rollout = make_rollout(stack, ids, mask, prompts, Sampling(8, 1.0, 1.0, False), score, lambda r: r,
                           [tokenizer.eos_token_id], tokenizer.pad_token_id, None, {})
    assert rollout.member_scores.shape == (len(prompts), 2)
    standalone = members.load(root / "ens", "uwo", uwo_lambda=0.7)
    input_ids, attention = right_padded_rows(rollout, ids, mask, tokenizer.pad_token_id)
    with torch.no_grad():
        same_tokens = standalone.normalised(
            lambda: standalone.model(input_ids=input_ids, attention_mask=attention).logits[:, 0])
    torch.testing.assert_close(rollout.raw_scores, same_tokens, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rollout.member_scores.T, standalone.last_members, rtol=1e-4, atol=1e-4)


def test_a_member_killed_before_its_first_checkpoint_resumes_after_the_last_finished_member(
        ensemble_run, tiny_model_dir, monkeypatch):
    """save_steps beyond the run: only the checkpoint each member leaves at its last step remains to resume from."""
    import align.reward.train as stage

    root, whole = ensemble_run
    learn = stage._learn_from
    config = reward_config(tiny_model_dir, root, "late", "training.ensemble=2", "training.save_steps=1000")

    def killed(groups, learner, out, state, *args):
        if state["step"] == 19:  # the second member's 4th step
            raise KeyboardInterrupt
        return learn(groups, learner, out, state, *args)

    monkeypatch.setattr(stage, "_learn_from", killed)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    # half an ensemble is no reward model: readers refuse it until the run finishes
    with pytest.raises(AlignError, match="has not finished"):
        members.load(root / "late")
    monkeypatch.setattr(stage, "_learn_from", learn)
    resumed = train(config, resume=True)
    logged = [json.loads(line)["step"] for line in (root / "late" / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in line]
    assert logged == list(range(1, 33))
    for key in ("eval/accuracy", "eval/disagreement", "member1/eval/margin"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-5), key
    assert len(members.load(root / "late").normalisers) == 2


def test_an_ensemble_needs_lora_members(tiny_model_dir, tmp_path):
    from align.core.errors import ConfigError

    with pytest.raises(ConfigError, match="model.tuning=lora"):
        load_config(RewardConfig, None, [f"model.name={tiny_model_dir}", "training.ensemble=3", "model.tuning=head"])


def test_evaluation_scores_long_texts_member_by_member(ensemble_run):
    """align eval's scorer falls back to whole-text scoring for texts over max_length: still one member at a
    time, so the ensemble combines its members once."""
    from align.eval.prefix import reward_scores

    root, _ = ensemble_run
    ensemble = members.load(root / "ens", "uwo", uwo_lambda=1.5, max_length=12)
    texts = [conversation_text(ensemble.tokenizer, [{"role": "user", "content": "What is 2 + 3?"}], answer)
             for answer in ("2 + 3 = 5.", "2 + 3 = 6, and that is a long and winding answer")]
    assert max(len(ensemble.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts) > 12
    got = ensemble.normalised(lambda: reward_scores(ensemble, texts))
    assert got.tolist() == pytest.approx(ensemble.score_texts(texts).tolist(), abs=1e-6)


def test_an_ensemble_resumed_with_other_step_settings_is_refused(ensemble_run, tiny_model_dir, monkeypatch):
    import align.reward.train as stage

    root, _ = ensemble_run
    learn = stage._learn_from

    def killed(groups, learner, out, state, *args):
        if state["step"] == 19:
            raise KeyboardInterrupt
        return learn(groups, learner, out, state, *args)

    base = ("training.ensemble=2", "training.save_steps=1000")
    monkeypatch.setattr(stage, "_learn_from", killed)
    with pytest.raises(KeyboardInterrupt):
        train(reward_config(tiny_model_dir, root, "moved", *base))
    monkeypatch.setattr(stage, "_learn_from", learn)
    with pytest.raises(AlignError, match="training.epochs would put its members' steps"):
        train(reward_config(tiny_model_dir, root, "moved", *base, "training.epochs=3"), resume=True, allow_changes=True)
    assert members.read_member(root / "moved", 0) is not None  # nothing lost
