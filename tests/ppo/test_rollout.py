"""EOS truncation, the no-EOS penalty, the two reward paths agreeing, and a micro-batch's columns."""

from __future__ import annotations

import pytest
import torch

from align.core import modeling
from align.ppo.models import PolicyStack
from align.ppo.batches import micro_batches, unpadded_columns
from align.ppo.rollout import Sampling, decode_responses, make_rollout, shared_base_scorer, text_scorer, truncate_at_eos
from align.reward.score import RewardModel


def test_truncate_after_the_first_eos():
    eos, pad = 2, 0
    responses = torch.tensor([[5, 6, 2, 7, 2], [5, 2, 6, 6, 6], [5, 6, 7, 8, 9], [2, 5, 5, 5, 5]])
    out, mask, has_eos = truncate_at_eos(responses, [eos], pad)
    assert out.tolist() == [[5, 6, 2, 0, 0], [5, 2, 0, 0, 0], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert has_eos.tolist() == [True, True, False, True]


def test_any_of_several_eos_ids_ends_a_response():
    out, mask, has_eos = truncate_at_eos(torch.tensor([[4, 9, 4], [4, 3, 4]]), [3, 9], 0)
    assert mask.tolist() == [[1, 1, 0], [1, 1, 0]] and has_eos.all()


def test_a_micro_batch_keeps_the_columns_its_own_rows_need():
    # Q = 6 prompt columns (left-padded), T = 5 response columns (right-padded)
    query_lengths, response_lengths = torch.tensor([3, 6, 2, 4]), torch.tensor([4, 1, 2, 5])
    assert unpadded_columns(query_lengths, response_lengths, torch.tensor([0, 2]), 6) == (slice(3, 10), slice(0, 4))
    assert unpadded_columns(query_lengths, response_lengths, torch.tensor([1, 3]), 6) == (slice(0, 11), slice(0, 5))
    assert unpadded_columns(query_lengths, response_lengths, torch.tensor([2]), 6) == (slice(4, 8), slice(0, 2))
    # empty prompts: their last (pad) column still predicts the first response token
    assert unpadded_columns(torch.tensor([0, 0, 2]), response_lengths, torch.tensor([0, 1]), 6) == (slice(5, 10), slice(0, 4))


def test_micro_batches_group_rows_of_like_length_within_the_token_budget():
    # prompts (left-padded) 3 6 2 4 5 1, responses (right-padded) 4 1 2 5 5 1: totals 7 7 4 9 10 2
    lengths = torch.tensor([3, 6, 2, 4, 5, 1]), torch.tensor([4, 1, 2, 5, 5, 1])
    rows = torch.tensor([0, 1, 2, 3, 4, 5])

    def cut(max_rows, max_tokens, of=rows):
        return [c.tolist() for c in micro_batches(of, lengths, max_rows, max_tokens)]

    # longest first (4 3 0 1 2 5), by count alone as grad_accum cuts
    assert cut(2, 10_000) == [[4, 3], [0, 1], [2, 5]]
    # budget 20: 4 + 3 pad to 2 x (5 + 5) = 20; 0 + 1 to 2 x (6 + 4) = 20, not 2 x 7: a long prompt beside
    # a long response costs both paddings; adding 2 would make 3 x 10
    assert cut(None, 20) == [[4, 3], [0, 1], [2, 5]]
    # budget 19: 4 alone (20 > 19); 3 + 0 = 2 x (4 + 5) = 18; 1 + 2 = 2 x (6 + 2) = 16; + 5 would be 24
    assert cut(None, 19) == [[4], [3, 0], [1, 2], [5]]
    assert cut(None, 15) == [[4], [3], [0], [1], [2, 5]]  # 0 + 1 would pad 20 tokens, not the 14 of their lengths
    assert cut(None, 3) == [[4], [3], [0], [1], [2], [5]]  # each over the budget goes alone
    assert cut(None, 20, torch.tensor([5, 0, 4])) == [[4, 0], [5]]  # a mini-batch's rows alone: 2 x (5 + 5)
    for budget in (3, 8, 13, 19, 20, 31):
        batches = micro_batches(rows, lengths, None, budget)
        assert sorted(i for b in batches for i in b.tolist()) == list(range(6))
        for b in batches:
            seq, _ = unpadded_columns(*lengths, b, 6)
            assert len(b) == 1 or len(b) * (seq.stop - seq.start) <= budget


def prompts_and_queries(tokenizer, n=6):
    from align.core.records import load_records
    from tests.conftest import DEMO

    prompts = load_records(DEMO / "heldout.jsonl", "prompts")[:n]
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(list(p.messages), tokenize=False, add_generation_prompt=True) for p in prompts]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return [list(p.messages) for p in prompts], enc["input_ids"], enc["attention_mask"]


def right_padded_rows(rollout, query_ids, query_mask, pad_id):
    """Each rollout row's real tokens (query, then response), right-padded: as a standalone reward model reads
    them. Returns (input_ids, attention_mask)."""
    rows = [torch.cat([query_ids[i][query_mask[i].bool()], rollout.response_ids[i][rollout.response_mask[i].bool()]])
            for i in range(len(query_ids))]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)], attention[i, :len(row)] = row, 1
    return input_ids, attention


def test_missing_eos_gets_the_penalty_instead_of_the_score(tiny_model_dir):
    cfg = modeling.ModelConfig(name=str(tiny_model_dir), quantization="none")
    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    stack = PolicyStack(cfg, tokenizer, None)
    prompts, ids, mask = prompts_and_queries(tokenizer)
    torch.manual_seed(0)
    rollout = make_rollout(stack, ids, mask, prompts, Sampling(6, 1.0, 1.0, False), lambda r, p: torch.full((len(p),), 5.0),
                           lambda raw: raw, [tokenizer.eos_token_id], tokenizer.pad_token_id, -1.0, {})
    assert (~rollout.has_eos).any()  # a random tiny model rarely stops within 6 tokens
    expected = torch.where(rollout.has_eos, torch.tensor(5.0), torch.tensor(-1.0))
    assert torch.equal(rollout.scores, expected)
    assert torch.equal(rollout.raw_scores, torch.full((6,), 5.0))
    # padding after EOS carries no log-prob, value or reference log-prob
    for tensor in (rollout.logprobs, rollout.ref_logprobs, rollout.values):
        assert (tensor[rollout.response_mask == 0] == 0).all()


def test_the_length_penalty_takes_its_rate_per_response_token_off_the_score(tiny_model_dir):
    cfg = modeling.ModelConfig(name=str(tiny_model_dir), quantization="none")
    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    stack = PolicyStack(cfg, tokenizer, None)
    prompts, ids, mask = prompts_and_queries(tokenizer)
    rollouts = []
    for penalty in (0.0, 0.25):
        torch.manual_seed(0)
        rollouts.append(make_rollout(stack, ids, mask, prompts, Sampling(12, 1.0, 1.0, False),
                                     # a third of the vocabulary ends a response, so lengths vary
                                     lambda r, p: torch.full((len(p),), 5.0), lambda raw: raw,
                                     list(range(0, len(tokenizer), 3)), tokenizer.pad_token_id, -1.0, {},
                                     length_penalty=penalty))
    plain, penalised = rollouts
    assert torch.equal(plain.response_ids, penalised.response_ids)
    lengths = penalised.response_mask.sum(1).float()
    assert len(set(lengths.tolist())) > 1
    # a response that ended pays 0.25 a token, EOS included; one that did not would get the no-EOS penalty alone
    expected = torch.where(penalised.has_eos, 5.0 - 0.25 * lengths, torch.tensor(-1.0))
    torch.testing.assert_close(penalised.scores, expected)
    torch.testing.assert_close(plain.scores, torch.where(plain.has_eos, 5.0, -1.0))


def test_shared_base_reward_equals_the_standalone_reward_model(tiny_model_dir, tmp_path):
    """The reward adapter on the policy's base, reading the rollout's token ids (left-padded
    queries, right-padded responses), must give what the saved reward model gives on the text."""
    from tests.reward.test_train import separable_preferences
    import json
    from align.core.config import load_config
    from align.reward.config import RewardConfig
    from align.reward.train import train

    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in separable_preferences(32)))
    train(load_config(RewardConfig, None, [
        f"out_dir={tmp_path / 'rm'}", f"model.name={tiny_model_dir}", f"data.train={tmp_path / 'p.jsonl'}",
        "model.quantization=none", "training.epochs=1", "tracking.wandb=false", "model.lora.r=4"]))
    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    stack = PolicyStack(modeling.ModelConfig(name=str(tiny_model_dir), quantization="none"), tokenizer, str(tmp_path / "rm"))
    assert stack.has_reward_adapter
    prompts, ids, mask = prompts_and_queries(tokenizer)
    torch.manual_seed(1)
    rollout = make_rollout(stack, ids, mask, prompts, Sampling(8, 1.0, 1.0, False), shared_base_scorer(stack), lambda raw: raw,
                           [tokenizer.eos_token_id], tokenizer.pad_token_id, None, {})
    standalone = RewardModel.load(tmp_path / "rm")
    # the same tokens, each sequence's real tokens right-padded, through the standalone model
    input_ids, attention = right_padded_rows(rollout, ids, mask, tokenizer.pad_token_id)
    with torch.no_grad():
        same_tokens = standalone.model(input_ids=input_ids, attention_mask=attention).logits[:, 0]
    torch.testing.assert_close(rollout.raw_scores, same_tokens, rtol=1e-4, atol=1e-4)
    # another tokenizer's path decodes and re-tokenises: a score per response, finite
    decoded = text_scorer(standalone, tokenizer)(rollout, prompts)
    assert decoded.shape == (len(prompts),) and torch.isfinite(decoded).all()
    assert len(decode_responses(rollout, tokenizer)) == len(prompts)


def test_log_probs_from_the_sampling_logits_match_a_pass_of_their_own(tiny_model_dir):
    """log π_old read off generation's logits (KV-cache steps, left-padded queries) must be the
    separate pass's, token for token: an off-by-one position or a missed temperature would not be."""
    cfg = modeling.ModelConfig(name=str(tiny_model_dir), quantization="none")
    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    stack = PolicyStack(cfg, tokenizer, None)
    prompts, ids, mask = prompts_and_queries(tokenizer)
    rollouts = []
    for from_sampling in (True, False):
        torch.manual_seed(3)  # the same draws, so the same responses
        rollouts.append(make_rollout(stack, ids, mask, prompts, Sampling(8, 0.7, 1.0, from_sampling),
                                     lambda r, p: torch.zeros(len(p)), lambda raw: raw, [tokenizer.eos_token_id],
                                     tokenizer.pad_token_id, None, {}))
    sampled, separate = rollouts
    assert torch.equal(sampled.response_ids, separate.response_ids)
    assert (separate.logprobs[separate.response_mask.bool()] < -0.5).any()  # tempered log-probs, not all ~0
    torch.testing.assert_close(sampled.logprobs, separate.logprobs, atol=1e-4, rtol=0)


def test_reference_log_probs_are_taken_at_the_sampling_temperature(tiny_model_dir):
    """While the policy is the reference (LoRA B = 0) π_ref's log-probs are π_old's, token for token,
    at a sampling temperature other than 1: the KL penalty starts at 0."""
    from align.ppo.losses import logprobs_of
    from align.ppo.models import REF

    cfg = modeling.ModelConfig(name=str(tiny_model_dir), quantization="none")
    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    stack = PolicyStack(cfg, tokenizer, None)
    prompts, ids, mask = prompts_and_queries(tokenizer)
    for from_sampling in (False, True):
        torch.manual_seed(4)
        rollout = make_rollout(stack, ids, mask, prompts, Sampling(8, 0.7, 1.0, from_sampling),
                               lambda r, p: torch.zeros(len(p)), lambda raw: raw, [tokenizer.eos_token_id],
                               tokenizer.pad_token_id, None, {})
        # a pass of its own gives the same numbers; the sampling logits agree up to rounding
        torch.testing.assert_close(rollout.ref_logprobs, rollout.logprobs, atol=1e-4 if from_sampling else 0, rtol=0)
    # at temperature 1 they differ: the check above can tell the two apart
    with torch.no_grad():
        logits = stack.policy_logits(rollout.input_ids, rollout.attention_mask, rollout.response_ids.shape[1], adapter=REF)
    at_one = logprobs_of(logits, rollout.response_ids, 1.0) * rollout.response_mask
    assert (at_one - rollout.logprobs).abs().max() > 0.1


def model_with(tiny_model_dir, tmp_path, *, config=None, generation=None):
    """A copy of the tiny model whose config.json and generation_config.json gain these settings."""
    import json
    import shutil

    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    for name, extra in (("config.json", config), ("generation_config.json", generation)):
        settings = json.loads((model_dir / name).read_text())
        (model_dir / name).write_text(json.dumps({**settings, **(extra or {})}))
    return model_dir


def test_sampling_ignores_the_checkpoints_own_generation_settings(tiny_model_dir, tmp_path):
    """A checkpoint that ships repetition_penalty, no_repeat_ngram_size, top_k and min_new_tokens must not reshape
    what PPO samples: the distribution drawn from is softmax(logits / T), the one log π_old is read from. The same
    seed draws the same tokens, with the same log-probs, as from the checkpoint without them."""
    drawn = []
    for generation in (None, {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2, "top_k": 5, "min_new_tokens": 4}):
        model_dir = model_with(tiny_model_dir, tmp_path / str(len(drawn)), generation=generation)
        tokenizer = modeling.load_tokenizer(str(model_dir))
        stack = PolicyStack(modeling.ModelConfig(name=str(model_dir), quantization="none"), tokenizer, None)
        _, ids, mask = prompts_and_queries(tokenizer)
        torch.manual_seed(0)
        drawn.append(stack.sample(ids, mask, temperature=0.7, max_new_tokens=12, pad_id=tokenizer.pad_token_id,
                                  eos_ids=[tokenizer.eos_token_id]))
    plain, configured = drawn
    assert torch.equal(plain.tokens, configured.tokens)
    torch.testing.assert_close(plain.logprobs, configured.logprobs, rtol=0, atol=0)
    assert stack.peft.generation_config.eos_token_id is not None  # the token ids stay


def test_no_dropout_of_any_kind_in_ppos_passes(tiny_model_dir, tmp_path):
    """The update runs in train mode and the rollout in eval mode: attention dropout (a float Llama's attention
    reads in train mode, not an nn.Dropout) would make the two differ and the ratio start away from 1."""
    model_dir = model_with(tiny_model_dir, tmp_path, config={"attention_dropout": 0.5})
    tokenizer = modeling.load_tokenizer(str(model_dir))
    stack = PolicyStack(modeling.ModelConfig(name=str(model_dir), quantization="none"), tokenizer, None)
    _, ids, mask = prompts_and_queries(tokenizer)
    with torch.no_grad():
        stack.peft.eval()
        rollout_mode = stack.policy_logits(ids, mask, 4)
        stack.peft.train()
        update_mode = [stack.policy_logits(ids, mask, 4) for _ in range(2)]
    for logits in update_mode:
        torch.testing.assert_close(logits, rollout_mode, atol=1e-5, rtol=0)


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_sampling_on_the_working_copy_draws_what_the_adapter_draws(tiny_model_dir, quantization):
    """generation.working_copy: the same responses from the same seed, log π_old within rounding, with a policy
    adapter that moves the logits; on a 4-bit base its LoRA layers keep their own forward (the output layer
    alone is copied), and the responses are the same too."""
    from align.core.sampling_weights import sampling_weights

    cfg = modeling.ModelConfig(name=str(tiny_model_dir), quantization=quantization)
    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    stack = PolicyStack(cfg, tokenizer, None)
    with torch.no_grad():
        for name, p in stack.peft.named_parameters():
            if ".lora_B.policy." in name:
                p.normal_(0, 0.5)
    prompts, ids, mask = prompts_and_queries(tokenizer)
    rollouts = []
    for working_copy in (False, True):
        torch.manual_seed(5)
        rollouts.append(make_rollout(stack, ids, mask, prompts, Sampling(10, 0.7, 1.0, True, working_copy),
                                     lambda r, p: torch.zeros(len(p)), lambda raw: raw, [tokenizer.eos_token_id],
                                     tokenizer.pad_token_id, None, {}))
    adapters, copied = rollouts
    assert torch.equal(copied.response_ids, adapters.response_ids)
    torch.testing.assert_close(copied.logprobs, adapters.logprobs, atol=1e-4, rtol=0)
    assert (copied.logprobs - copied.ref_logprobs).abs().max() > 0.05  # the adapter moved them off the base
    with sampling_weights(stack.peft, len(prompts)) as layers:
        assert layers == (1 if quantization == "nf4" else 15)  # tiny: 2 blocks x 7 LoRA layers, the output layer
