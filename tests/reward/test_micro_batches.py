"""Token-budget micro-batches: the cut, the exact K-wise gradient over a batch split across them, and the
pre-flight memory estimate that refuses a run before its model loads."""

from __future__ import annotations

import json

import pytest

from align.core.config import load_config
from align.core.errors import AlignError
from align.core.token_batches import activation_bytes, token_batches
from align.reward.config import RewardConfig
from tests.reward.test_train import separable_preferences


def test_token_batches_cut_sorted_lengths_at_the_padded_budget():
    lengths = [5, 90, 7, 88, 6, 91, 40]
    # longest first: 91 90 | 88 40 | 7 6 5; 91 90 88 would pad 3 x 91 = 273 > 200, 88 40 7 3 x 88 = 264
    assert token_batches(lengths, 200) == [[5, 1], [3, 6], [2, 4, 0]]
    assert token_batches(lengths, 200, max_items=2) == [[5, 1], [3, 6], [2, 4], [0]]
    assert token_batches(lengths, 10_000) == [[5, 1, 3, 6, 2, 4, 0]]


def test_a_sequence_over_the_budget_goes_alone_and_every_index_once():
    lengths = [300, 10, 12, 250]
    batches = token_batches(lengths, 100)
    assert batches == [[0], [3], [2, 1]]
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 100
    assert token_batches([], 8) == []
    with pytest.raises(ValueError):
        token_batches([1], 0)


def test_activation_bytes_smollm2_shape():
    # per layer 24 x 576 + 8 x 1536 = 26112 values; x 30 layers x 4 bytes = 3,133,440 bytes a token
    assert activation_bytes(576, 1536, 30, recompute=False) == 3_133_440
    # recomputed: 2 x 576 x 30 + 26112 = 60672 values x 4
    assert activation_bytes(576, 1536, 30, recompute=True) == 242_688


def _config(tiny_model_dir, tmp_path, *extra):
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in separable_preferences(16, seed=5)))
    return load_config(RewardConfig, None, [
        f"out_dir={tmp_path / 'run'}", f"model.name={tiny_model_dir}", f"data.train={data}", "model.lora.dropout=0",
        "tracking.wandb=false", "training.batch_size=8", "data.eval_fraction=0.25", *extra])


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_micro_batches_accumulate_the_whole_batch_gradient(tiny_model_dir, tmp_path, quantization):
    """The K-wise loss couples completions across micro-batches; the accumulated gradient must be the
    gradient of the whole batch's loss, not a sum of per-micro-batch losses (that would drop the pairs
    split between two micro-batches and weigh groups wrongly)."""
    import torch

    from align.reward.formats import load_groups
    from align.reward.micro_batches import backward
    from align.reward.train import _build_learner

    config = _config(tiny_model_dir, tmp_path, f"model.quantization={quantization}")
    groups = load_groups(config.data.train)[:6]
    learner = _build_learner(config, len(groups))
    learner.model.train()

    def gradient(max_tokens):
        learner.batcher.max_tokens = max_tokens
        batch = learner.batcher(groups)
        learner.optimizer.zero_grad()
        rewards, loss = backward(learner.accelerator, learner.model, batch, 0.75)
        grads = {n: p.grad.detach().clone() for n, p in learner.model.named_parameters() if p.requires_grad}
        return batch, rewards.detach(), loss.item(), grads

    batch, rewards_whole, loss_whole, whole = gradient(100_000)
    longest = batch["inputs"][0]["input_ids"].shape[1]
    lengths = batch["inputs"][0]["attention_mask"].sum(1).tolist()  # in the batch's order: 2 a group
    middle = sorted(max(lengths[i], lengths[i + 1]) for i in range(0, len(lengths), 2))[len(lengths) // 4]
    assert any(g.abs().sum() > 0 for g in whole.values())
    # whole groups of two a micro-batch; the longer groups split and the rest whole; every completion alone
    for budget, kinds in ((2 * longest, {True}), (2 * middle, {True, False}), (1, {False})):
        batch, rewards_split, loss_split, split = gradient(budget)
        assert len(batch["micro"]) >= 4 and set(batch["whole"]) == kinds, (budget, batch["whole"])  # 12 completions
        assert torch.allclose(rewards_split, rewards_whole, atol=1e-5)
        assert loss_split == pytest.approx(loss_whole, rel=1e-5)
        for name, g in whole.items():
            assert torch.allclose(split[name], g, rtol=1e-4, atol=1e-6), (budget, name)


def test_replayed_dropout_gives_the_same_rewards_in_both_passes(tiny_model_dir, tmp_path, monkeypatch):
    """With LoRA dropout the second, graph-keeping pass must see the first pass's masks: otherwise dL/dr
    belongs to other rewards than the ones differentiated."""
    import torch

    import align.reward.train as rt
    from align.reward.micro_batches import backward
    from align.reward.formats import load_groups

    config = _config(tiny_model_dir, tmp_path, "model.quantization=none", "model.lora.dropout=0.5")
    groups = load_groups(config.data.train)[:4]
    learner = rt._build_learner(config, len(groups))
    learner.model.train()
    learner.batcher.max_tokens = 1  # every completion alone
    batch = learner.batcher(groups)
    rewards_seen = []  # by the second, graph-keeping pass; the first runs on the unwrapped model
    real_model = learner.model

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = real_model

        def forward(self, **inputs):
            out = self.inner(**inputs)
            rewards_seen.append(out.logits[:, 0].detach().float().clone())
            return out

    learner.model = Recorder()
    monkeypatch.setattr(learner.accelerator, "unwrap_model", lambda m: real_model)
    rewards, _ = backward(learner.accelerator, learner.model, batch, 1.0)
    recomputed = torch.zeros_like(rewards)
    for indices, r in zip(batch["micro"], rewards_seen):
        recomputed[indices] = r
    assert len(rewards_seen) == len(batch["micro"]) == 8
    assert torch.equal(recomputed, rewards)  # the same masks: the same rewards, bit for bit


def test_preflight_refuses_a_run_that_cannot_fit_before_loading(tiny_model_dir, tmp_path, monkeypatch):
    import align.reward.memory
    from align.reward.train import train

    config = _config(tiny_model_dir, tmp_path, "training.max_tokens_per_batch=4096", "data.max_length=256")
    estimate = align.reward.memory.estimate_peak_bytes(config, tiny_model_dir)
    assert estimate is not None
    monkeypatch.setattr(align.reward.memory, "available_bytes", lambda: estimate - 1)
    loaded = []
    monkeypatch.setattr("align.core.modeling.load_base", lambda *a, **k: loaded.append(1))
    with pytest.raises(AlignError) as refused:
        train(config)
    message = str(refused.value)
    assert "\n" not in message
    assert "lower training.max_tokens_per_batch (now 4096)" in message
    assert "training.gradient_checkpointing=true" in message
    assert not loaded and not (tmp_path / "run").exists()
    # a max_length above the budget is what sets the largest micro-batch: it is the setting named
    long = _config(tiny_model_dir, tmp_path, "training.max_tokens_per_batch=128", "data.max_length=8192")
    monkeypatch.setattr(align.reward.memory, "available_bytes", lambda: 1)
    with pytest.raises(AlignError, match=r"lower data\.max_length \(now 8192\)"):
        train(long)


def test_estimate_grows_with_the_budget_and_shrinks_with_recomputation(tiny_model_dir, tmp_path):
    from align.reward.memory import estimate_peak_bytes

    def estimate(*extra):
        return estimate_peak_bytes(_config(tiny_model_dir, tmp_path, "data.max_length=64", *extra), tiny_model_dir)

    small, large = estimate("training.max_tokens_per_batch=512"), estimate("training.max_tokens_per_batch=4096")
    recomputed = estimate("training.max_tokens_per_batch=4096", "training.gradient_checkpointing=true")
    assert small < recomputed < large
    assert estimate_peak_bytes(_config(tiny_model_dir, tmp_path), tmp_path / "nowhere") is None


def test_token_batches_count_a_group_as_its_rows():
    # groups of 2, 3 and 1 completions padded to 50, 40 and 30 tokens: 2 x 50 + 3 rows -> 5 x 50 = 250 > 200
    assert token_batches([50, 40, 30], 200, sizes=[2, 3, 1]) == [[0], [1, 2]]  # 4 rows x 40 = 160
    assert token_batches([50, 40, 30], 300, sizes=[2, 3, 1]) == [[0, 1, 2]]  # 6 rows x 50 = 300
