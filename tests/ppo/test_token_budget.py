"""PPO by a token budget (training.max_tokens_per_batch): the update's gradient does not depend on how its
micro-batches are cut; the no-grad passes run in micro-batches within the budget, give the whole batch's
figures and keep nothing for a backward; processes that cut their shares into different numbers of
micro-batches train like one; and the pre-flight estimate refuses a run that cannot fit, in one line."""

from __future__ import annotations

import json
import re
import shutil
from types import SimpleNamespace

import pytest
import torch

from align.core import modeling
from align.core.errors import AlignError
from align.ppo.batches import unpadded_columns
from align.ppo.models import PolicyStack
from align.ppo.rollout import Sampling, make_rollout, shared_base_scorer, text_scorer
from tests.ppo.test_models import head_on_base_reward
from tests.ppo.test_rollout import prompts_and_queries
from tests.conftest import DEMO
from tests.ppo.test_train import demo_prompts, move_off_the_start, toy_config


ENDS = list(range(100, 200))  # a fifth of the tiny vocabulary


@pytest.fixture(scope="module")
def varied_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with a fifth of its vocabulary ending a response: responses of many lengths."""
    model_dir = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("varied") / "model")
    generation = json.loads((model_dir / "generation_config.json").read_text())
    generation["eos_token_id"] = ENDS
    (model_dir / "generation_config.json").write_text(json.dumps(generation))
    return model_dir


def trainer_of(model_dir, out, *extra):
    from align.core.rundir import StageDir
    from align.ppo.train import PPOTrainer

    out.mkdir()
    return PPOTrainer(toy_config(model_dir, out, "data.eval_prompts=null", "training.eval_steps=0", *extra), StageDir(out))


def padded(lengths, rows):
    seq, _ = unpadded_columns(*lengths, rows, 10**6)
    return len(rows) * (seq.stop - seq.start)


def test_the_update_is_the_same_however_the_token_budget_cuts_it(varied_model, tmp_path, monkeypatch):
    """One mini-batch of 8 uneven rows: in one micro-batch, in a few of like length, and a row each. The loss
    is a token mean over the whole mini-batch, so the gradient and every figure agree to float rounding;
    weighting each micro-batch's mean equally (as TRL and N+ do) would not."""
    import align.ppo.train as ppo_train

    # no clipping: the raw gradient is compared; sampling through the adapters, so log π_old agrees with the
    # update's own pass to the rounding of that pass (a working copy's would put 1e-5 into ratios near 1)
    trainer = trainer_of(varied_model, tmp_path / "run", "training.batch_size=8", "training.mini_batch_size=8", "training.ppo_epochs=1",
                         "training.max_grad_norm=1e9", "generation.working_copy=false")
    move_off_the_start(trainer)
    torch.manual_seed(0)
    rollout = trainer._rollout(demo_prompts(8), {})
    _, advantages, returns = trainer._advantages(rollout)
    lengths = (rollout.query_mask.sum(1), rollout.response_mask.sum(1))
    assert len(set(rollout.response_mask.sum(1).tolist())) > 2  # uneven responses, and prompts
    widest = int((lengths[0] + lengths[1]).max())

    cuts, real_cut = [], ppo_train.micro_batches
    monkeypatch.setattr(ppo_train, "micro_batches", lambda *a: cuts.append(real_cut(*a)) or cuts[-1])
    gradients = []
    names = list(trainer.stack.named_trainable())
    monkeypatch.setattr(trainer.optimizer, "step", lambda *a, **k: gradients.append(
        [trainer.stack.named_trainable()[n].grad.clone() for n in names]))
    figures = [trainer.optimise(rollout, advantages, returns, 0) for trainer.config.training.max_tokens_per_batch in
               (100_000, 2 * widest, 1)]

    assert [len(c) for c in (cuts[0], cuts[2])] == [1, 8] and 1 < len(cuts[1]) < 8
    assert all(len(rows) == 1 or padded(lengths, rows) <= 2 * widest for rows in cuts[1])
    assert any(g.abs().sum() > 0 for g in gradients[0])
    for other in gradients[1:]:
        for name, a, b in zip(names, gradients[0], other):
            assert (b - a).norm() <= 1e-5 * a.norm(), name  # float rounding: sums in another order
    # loss/policy_avg at ratio 1 is -mean(A) of whitened advantages: 0 up to the rounding of ~100 terms of
    # size ~1, whose order (and the output layer's blocking) follows the cut; absolute 1e-6
    for other in figures[1:]:
        for key, value in figures[0].items():
            assert other[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_the_no_grad_passes_in_micro_batches_give_the_whole_batchs_figures_and_keep_nothing(varied_model, tmp_path):
    """log π_old, log π_ref, V and a reward head on the base (read off the reference pass), by micro-batch
    within the budget at their own width: the figures of one pass over the whole batch, and no tensor
    saved for a backward (the same passes with autograd on save hundreds)."""
    tokenizer = modeling.load_tokenizer(str(varied_model))
    reward = head_on_base_reward(varied_model, tmp_path / "reward")
    stack = PolicyStack(modeling.ModelConfig(name=str(varied_model), quantization="none"), tokenizer, str(reward))
    move_off_the_start(SimpleNamespace(stack=stack))  # the policy and values away from the reference and 0
    prompts, ids, mask = prompts_and_queries(tokenizer, n=6)
    passes, saved = [], []
    real_values = stack.values
    stack.values = lambda ids, mask, n: passes.append(tuple(ids.shape)) or real_values(ids, mask, n)

    def rollout(budget, max_rows=None):
        passes.clear()
        torch.manual_seed(5)  # the same responses each time
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
            return make_rollout(stack, ids, mask, prompts, Sampling(8, 0.7, 1.0, False), shared_base_scorer(stack),
                                lambda raw: raw, ENDS, tokenizer.pad_token_id, None, {}, max_tokens=budget,
                                max_rows=max_rows)

    whole = rollout(None)
    assert passes == [tuple(whole.input_ids.shape)]
    widest = int((whole.query_mask.sum(1) + whole.response_mask.sum(1)).max())
    assert len(set(whole.response_mask.sum(1).tolist())) > 1 and whole.values.abs().sum() > 0
    for budget, max_rows in ((2 * widest, None), (10**6, 2), (1, None)):
        cut = rollout(budget, max_rows)
        assert 1 < len(passes) and all(rows == 1 or rows * width <= budget for rows, width in passes)
        assert sum(rows for rows, _ in passes) == 6 and all(rows <= (max_rows or 6) for rows, _ in passes)
        assert torch.equal(cut.response_ids, whole.response_ids)
        for name in ("logprobs", "ref_logprobs", "values", "raw_scores"):
            torch.testing.assert_close(getattr(cut, name), getattr(whole, name), rtol=0, atol=1e-5, msg=name)
    assert not saved
    assert (whole.logprobs - whole.ref_logprobs).abs().max() > 1e-3  # the policy is not the reference
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        stack.values(ids, mask, 4)
    assert saved  # the check can tell: a pass with autograd on saves tensors


def test_a_reward_model_of_its_own_scores_in_eval_mode_in_batches_within_the_budget(varied_model):
    """Another base's reward model re-tokenises the texts: its batches stay within the token budget, in
    inference mode (nothing kept for a backward) and eval mode, and scores keep their rows' order."""
    from transformers import AutoModelForSequenceClassification

    from align.reward.score import Normaliser, RewardModel

    tokenizer = modeling.load_tokenizer(str(varied_model))
    model = AutoModelForSequenceClassification.from_pretrained(str(varied_model), num_labels=1).train()
    model.config.pad_token_id = tokenizer.pad_token_id
    reward_model = RewardModel(model, tokenizer, Normaliser())
    seen = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(
        (tuple(kwargs["input_ids"].shape), torch.is_inference_mode_enabled(), m.training)), with_kwargs=True)
    stack = PolicyStack(modeling.ModelConfig(name=str(varied_model), quantization="none"), tokenizer, None)
    prompts, ids, mask = prompts_and_queries(tokenizer, n=6)
    torch.manual_seed(2)
    rollout = make_rollout(stack, ids, mask, prompts, Sampling(8, 0.7, 1.0, True), lambda r, p: torch.zeros(len(p)),
                           lambda raw: raw, ENDS, tokenizer.pad_token_id, None, {})
    assert len(set(rollout.response_mask.sum(1).tolist())) > 1
    whole = text_scorer(reward_model, tokenizer)(rollout, prompts)
    seen.clear()
    budgeted = text_scorer(reward_model, tokenizer, max_tokens=60)(rollout, prompts)
    assert len(seen) > 1 and all(inference and not training for _, inference, training in seen)
    assert all(rows == 1 or rows * width <= 60 for (rows, width), _, _ in seen)
    torch.testing.assert_close(budgeted, whole, rtol=0, atol=1e-5)
    assert model.training  # left as it was found


def test_held_out_answers_generated_a_few_at_a_time_give_the_figures_of_all_at_once(varied_model, tmp_path):
    from align.core.records import load_records
    from tests.conftest import DEMO

    trainer = trainer_of(varied_model, tmp_path / "run", "training.batch_size=8", "training.mini_batch_size=4", "data.eval_samples=0")
    move_off_the_start(trainer)
    prompts = load_records(DEMO / "heldout.jsonl", "prompts")[:6]
    generated = []
    real_sample = trainer.stack.sample
    trainer.stack.sample = lambda ids, mask, **k: generated.append(ids.shape[0]) or real_sample(ids, mask, **k)
    trainer.heldout.max_generated, trainer.heldout.max_tokens = None, None
    at_once = trainer.evaluate(prompts)
    trainer.heldout.max_generated, trainer.heldout.max_tokens = 4, 30
    in_groups = trainer.evaluate(prompts)
    assert generated == [6, 4, 2]
    for key, value in at_once.items():
        assert in_groups[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert at_once["kl"] != 0


# ---------------------------------------------------------------- the pre-flight estimate


def ppo_config(model_dir, tmp_path, *extra):
    from align.core.config import load_config
    from align.ppo.config import PPOConfig

    return load_config(PPOConfig, None, [f"out_dir={tmp_path / 'run'}", f"model.name={model_dir}", "data.eval_prompts=null",
                                         "reward.model=null", "reward.function=tests.ppo.toy_reward:digit_count",
                                         "tracking.wandb=false", *extra])


def test_the_estimate_grows_with_the_budget_the_rollout_and_shrinks_with_recomputation(tiny_model_dir, tmp_path):
    from align.ppo import memory

    shape = memory.model_shape(tiny_model_dir)

    def phases(*extra):
        return memory.estimate(ppo_config(tiny_model_dir, tmp_path, "data.max_prompt_length=64", *extra), shape)

    small, large = phases("training.max_tokens_per_batch=512"), phases("training.max_tokens_per_batch=8192")
    recomputed = phases("training.max_tokens_per_batch=8192", "training.gradient_checkpointing=true")
    assert small.update < recomputed.update < large.update and small.no_grad < large.no_grad
    assert small.generation == large.generation
    # the KV cache: batch_size x (max_prompt_length + max_new_tokens) x 2 x layers x K/V width x 4 bytes
    longer = phases("data.max_prompt_length=1024")
    kv = 8 * (1024 - 64) * 2 * 2 * 32 * 4  # the tiny model: 2 layers, 2 K/V heads x 16, batch 8
    assert longer.generation - small.generation >= kv
    assert memory.model_shape(tmp_path / "nowhere") is None


@pytest.mark.parametrize(("extra", "named"), [
    (["training.max_tokens_per_batch=200000"], r"\(update\) and .* available: lower training\.max_tokens_per_batch \(now 200000\), "
                                          r"or set training\.gradient_checkpointing=true$"),
    # a row longer than the budget goes alone: the longest prompt sets the largest micro-batch
    (["data.max_prompt_length=300000", "training.max_tokens_per_batch=64", "training.batch_size=2", "training.mini_batch_size=2"],
     r"\(update\) .*lower data\.max_prompt_length \(now 300000\), or set training\.gradient_checkpointing=true$"),
    (["data.max_prompt_length=60000", "training.batch_size=128", "training.mini_batch_size=2"],
     r"\(generation\) .*lower data\.max_prompt_length \(now 60000\) or training\.batch_size \(now 128\), or set generation\.working_copy=false$"),
])
def test_a_run_that_cannot_fit_is_refused_in_one_line_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch,
                                                                              extra, named):
    from click.testing import CliRunner

    import align.ppo.memory as memory
    from align.cli import cli

    config = ppo_config(tiny_model_dir, tmp_path, *extra)
    phases = memory.estimate(config, memory.model_shape(tiny_model_dir))
    monkeypatch.setattr(memory, "available_bytes", lambda: phases.peak - 1)
    loaded = []
    monkeypatch.setattr("align.core.modeling.load_base", lambda *a, **k: loaded.append(1))
    with pytest.raises(AlignError) as refused:
        from align.ppo.train import train

        train(config)
    assert "\n" not in str(refused.value) and re.search(named, str(refused.value)), str(refused.value)
    assert not loaded and not (tmp_path / "run").exists()
    monkeypatch.setattr(memory, "available_bytes", lambda: phases.peak)  # just fits: not refused here
    memory.check_fits(config, tiny_model_dir)

    monkeypatch.setattr(memory, "available_bytes", lambda: 1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(cli, ["ppo", "--out", str(tmp_path / "cli"), f"--set=model.name={tiny_model_dir}",
                                      "--set=reward.model=null", "--set=reward.function=tests.ppo.toy_reward:digit_count",
                                      "--set=data.eval_prompts=null", "--set=tracking.wandb=false",
                                      f"--set=data.prompts={DEMO / 'prompts.jsonl'}",
                                      *[f"--set={s}" for s in extra]])
    assert result.exit_code == 2, result.output
    assert len(re.findall(r"error: [^\n]*PPO needs about", result.output)) == 1, result.output


def test_processes_that_cut_their_shares_into_different_numbers_of_micro_batches_train_like_one(tiny_model_dir, tmp_path,
                                                                                                 monkeypatch):
    """Under two processes each takes 2 rows of every mini-batch of 4 and cuts them by the budget: 64 tokens
    hold two of the shorter demo prompts (+ 8 response tokens) but not two of the longer, so in some
    mini-batches one process runs one micro-batch and the other two. A collective step inside the
    micro-batch loop would hang there; the gradient sum after it must still give the one-process run."""
    import align.ppo.train as ppo_train
    from align.ppo.config import PPOConfig
    from tests.reliability.test_processes import PPO, compare, run_one_and_two

    seen, real = [], ppo_train.micro_batches
    monkeypatch.setattr(ppo_train, "micro_batches", lambda rows, lengths, *rest: seen.append((rows, lengths)) or
                        real(rows, lengths, *rest))
    settings = [f"model.name={tiny_model_dir}", *(s for s in PPO if not s.startswith("training.grad_accum")),
                "training.grad_accum=1", "training.max_tokens_per_batch=64"]
    one, two = run_one_and_two("ppo", ppo_train.train, PPOConfig, settings, tmp_path)
    # the shares of the same mini-batches (the rollouts are alike: top_p -> 0 samples the likeliest token)
    counts = [(len(real(rows[:2], lengths, 2, 64)), len(real(rows[2:], lengths, 2, 64))) for rows, lengths in seen]
    assert any(a != b for a, b in counts) and len(counts) == 24, counts
    compare(one, two)


def test_approxkl_and_ratio_are_also_logged_averaged_over_padding_as_trl_does(varied_model, tmp_path):
    """One mini-batch, one epoch: TRL's padded means are ours scaled by the real tokens' share of the padded
    (rows x columns) responses, where log r = 0 and r = 1; computed here from the update's own log-probs."""
    from align.ppo.losses import logprobs_of

    trainer = trainer_of(varied_model, tmp_path / "run", "training.batch_size=8", "training.mini_batch_size=8", "training.ppo_epochs=1",
                         "training.learning_rate=1e-12")  # the update barely moves: new log-probs are the ones read here
    move_off_the_start(trainer)
    torch.manual_seed(0)
    rollout = trainer._rollout(demo_prompts(8), {})
    _, advantages, returns = trainer._advantages(rollout)
    with torch.no_grad():  # the policy moves after its rollout, as after an earlier mini-batch: r != 1
        for name, param in trainer.stack.named_trainable().items():
            if ".lora_B.policy." in name:
                param.add_(torch.randn_like(param) * 0.02)
        T = rollout.response_ids.shape[1]
        new = logprobs_of(trainer.stack.policy_logits(rollout.input_ids, rollout.attention_mask, T),
                          rollout.response_ids, trainer.sampling.temperature)
    mask = rollout.response_mask.float()
    log_ratio = (new - rollout.logprobs) * mask
    assert mask.mean() < 0.9 and log_ratio.abs().max() > 1e-2  # padding to average over, and r != 1
    figures = trainer.optimise(rollout, advantages, returns, 0)
    cells = mask.numel()
    assert figures["policy/approxkl_padded_avg"] == pytest.approx(0.5 * (log_ratio ** 2).sum().item() / cells, rel=1e-3)
    assert figures["val/ratio_padded"] == pytest.approx(((log_ratio.exp() - 1) * mask).sum().item() / cells + 1, rel=1e-6)
    assert figures["policy/approxkl_avg"] == pytest.approx(0.5 * (log_ratio ** 2).sum().item() / mask.sum().item(), rel=1e-3)
