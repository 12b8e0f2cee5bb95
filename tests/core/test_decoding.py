"""core/decoding.py: the packed prompt pass and the decode loop give each row what the model gives that row alone,
and the inverse-CDF draw samples the distribution it is given."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from align.core import decoding, modeling


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import LlamaForCausalLM

    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()
    texts = ["What is 7 times 8?", "Name a colour.", "Write a haiku about the sea, please, in English."]
    rows = [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True)
            for t in texts]
    rows = [list(r["input_ids"]) if isinstance(r, dict) or hasattr(r, "keys") else list(r) for r in rows]
    return model, tokenizer, rows


def settings(tokenizer, **extra):
    return {"max_new_tokens": 8, "temperature": 0.7, "eos_ids": [tokenizer.eos_token_id],
            "pad_id": tokenizer.pad_token_id, **extra}


def test_rows_share_a_prefix_and_differ_in_length(tiny):
    """The case the packed pass exists for: a shared template prefix, own parts of different lengths."""
    _, _, rows = tiny
    from align.core.prefix import common_prefix

    assert common_prefix(rows) >= 3 and len({len(r) for r in rows}) == 3


@torch.no_grad()
def test_the_packed_prompt_pass_gives_each_row_its_own_logits(tiny):
    model, tokenizer, rows = tiny
    start = decoding.prompt(model, rows, tokenizer.pad_token_id)
    assert start.packs_steps
    for i, row in enumerate(rows):
        alone = model(input_ids=torch.tensor([row])).logits[0, -1]
        torch.testing.assert_close(start.logits[i], alone, atol=1e-5, rtol=0)
    padded = decoding._padded(model, rows, tokenizer.pad_token_id)
    torch.testing.assert_close(start.logits, padded.logits, atol=1e-5, rtol=0)
    assert torch.equal(start.mask, padded.mask)  # [shared prefix][left padding][own tokens], the same columns


@torch.no_grad()
def test_greedy_answers_are_transformers_greedy_answers_of_each_prompt_alone(tiny):
    """Positions, the mask over the padding between prefix and own tokens, and the cache's growth, step by step:
    a mistake in any of them changes some row's answer against generate's on that prompt alone."""
    model, tokenizer, rows = tiny
    out = decoding.sample(model, decoding.prompt(model, rows, tokenizer.pad_token_id),
                          **settings(tokenizer, max_new_tokens=10), greedy=True)
    for i, row in enumerate(rows):
        reference = model.generate(input_ids=torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long),
                                   max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=[tokenizer.eos_token_id])[0, len(row):].tolist()
        assert out.tokens[i, :len(reference)].tolist() == reference


@torch.no_grad()
def test_log_probs_are_a_forward_pass_of_the_sampled_tokens(tiny):
    model, tokenizer, rows = tiny
    torch.manual_seed(0)
    out = decoding.sample(model, decoding.prompt(model, rows, tokenizer.pad_token_id), **settings(tokenizer), n=2)
    assert out.tokens.shape[0] == 2 * len(rows)
    for j in range(out.tokens.shape[0]):
        row, tokens = rows[j // 2], out.tokens[j].tolist()
        if tokenizer.eos_token_id in tokens:
            tokens = tokens[:tokens.index(tokenizer.eos_token_id) + 1]
        logits = model(input_ids=torch.tensor([row + tokens])).logits[0, len(row) - 1:-1]  # (T, V)
        expected = torch.log_softmax(logits / 0.7, -1).gather(1, torch.tensor(tokens)[:, None])[:, 0]
        torch.testing.assert_close(out.logprobs[j, :len(tokens)], expected, atol=1e-5, rtol=0)
        assert (out.logprobs[j, len(tokens):] == 0).all()
        assert (out.tokens[j, len(tokens):] == tokenizer.pad_token_id).all()


@torch.no_grad()
def test_one_prompt_sampled_n_times_runs_the_prompt_for_one_row(tiny):
    """The whole prompt but its last token is the shared prefix: n draws from the same start, which differ."""
    model, tokenizer, rows = tiny
    start = decoding.prompt(model, [rows[2]] * 4, tokenizer.pad_token_id)
    assert start.mask.shape == (4, len(rows[2])) and bool(start.mask.all())
    torch.manual_seed(1)
    out = decoding.sample(model, start, **settings(tokenizer, temperature=1.5))
    assert len({tuple(t) for t in out.tokens.tolist()}) > 1


def test_the_draw_follows_the_distribution_and_its_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logprobs = probs.log().expand(20_000, 4)
    torch.manual_seed(0)
    counts = torch.bincount(decoding.draw(logprobs), minlength=4) / 20_000
    torch.testing.assert_close(counts, probs, atol=0.012, rtol=0)  # 3.5 standard errors at 0.5
    # top_p 0.75: token 1 has 0.5 before it, under 0.75, token 2 has 0.8; the first two renormalised
    nucleus = torch.bincount(decoding.draw(logprobs, top_p=0.75), minlength=4) / 20_000
    torch.testing.assert_close(nucleus, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.012, rtol=0)
    # a nucleus smaller than the first token keeps the first token
    assert (decoding.draw(logprobs[:100], top_p=0.1) == 0).all()
    # never a token of probability zero, also at the top of the cumulative sum
    zero_tail = torch.tensor([0.7, 0.3, 0.0]).log().expand(5_000, 3)
    assert (decoding.draw(zero_tail) < 2).all()


def test_the_growing_layer_returns_what_dynamic_layers_concatenation_returns():
    keys, values = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    grown, plain = decoding.GrowingLayer(keys, values, room=2), DynamicLayer()
    plain.update(keys, values)
    for _ in range(4):  # two steps within the room, two beyond it
        k, v = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
        got, want = grown.update(k, v), plain.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert grown.get_seq_length() == 9


def test_an_empty_prompt_is_refused(tiny):
    model, tokenizer, rows = tiny
    with pytest.raises(ValueError, match="at least one token"):
        decoding.prompt(model, [rows[0], []], tokenizer.pad_token_id)


@torch.no_grad()
def test_rows_end_at_their_first_eos_and_sampling_stops_when_all_have(tiny):
    model, tokenizer, rows = tiny
    start = decoding.prompt(model, rows, tokenizer.pad_token_id)
    first = start.logits.argmax(-1).tolist()  # each row's greedy first token
    pad = tokenizer.pad_token_id
    out = decoding.sample(model, start, **settings(tokenizer, eos_ids=[first[0]], max_new_tokens=6), greedy=True)
    assert out.tokens.shape == (3, 6) and out.tokens[0, 0] == first[0]
    assert (out.tokens[0, 1:] == pad).all() and (out.logprobs[0, 1:] == 0).all() and out.logprobs[0, 0] < 0
    ended = decoding.sample(model, start, **settings(tokenizer, eos_ids=first, max_new_tokens=6), greedy=True)
    assert ended.tokens.shape == (3, 1)  # every row ended at its first token: no step after
    assert decoding.sample(model, start, **settings(tokenizer, max_new_tokens=1)).tokens.shape == (3, 1)
    # the start is not consumed: the same greedy answers again
    again = decoding.sample(model, start, **settings(tokenizer, eos_ids=[first[0]], max_new_tokens=6), greedy=True)
    assert torch.equal(again.tokens, out.tokens)


@torch.no_grad()
def test_packed_passes_within_a_token_budget_give_what_one_pass_gives(tiny, monkeypatch):
    model, tokenizer, rows = tiny
    whole = decoding.prompt(model, rows, tokenizer.pad_token_id)
    monkeypatch.setattr(decoding, "PACKED_TOKENS", 1)  # every row over the budget: a pass of its own
    assert decoding._groups([[5, 6], [7], [8, 9, 10]], 1) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    assert decoding._groups([[5, 6], [7], [8, 9, 10]], 3) == [slice(0, 2), slice(2, 3)]
    parts = decoding.prompt(model, rows, tokenizer.pad_token_id)
    torch.testing.assert_close(parts.logits, whole.logits, atol=1e-5, rtol=0)
    for a, b in zip(parts.cache.layers, whole.cache.layers):
        real = whole.mask.bool()[:, None, :, None].expand_as(a.keys)  # padding columns hold nothing to compare
        torch.testing.assert_close(a.keys[real], b.keys[real], atol=1e-5, rtol=0)
        torch.testing.assert_close(a.values[real], b.values[real], atol=1e-5, rtol=0)


@torch.no_grad()
def test_eager_attention_takes_the_padded_prompt_and_a_2d_mask_with_the_same_answers(tiny, tiny_model_dir):
    from transformers import LlamaForCausalLM

    model, tokenizer, rows = tiny
    eager = LlamaForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    start = decoding.prompt(eager, rows, tokenizer.pad_token_id)
    assert not start.packs_steps
    ours = decoding.sample(eager, start, **settings(tokenizer, max_new_tokens=10), greedy=True)
    packed = decoding.sample(model, decoding.prompt(model, rows, tokenizer.pad_token_id),
                             **settings(tokenizer, max_new_tokens=10), greedy=True)
    assert torch.equal(ours.tokens, packed.tokens)
    torch.testing.assert_close(ours.logprobs, packed.logprobs, atol=1e-4, rtol=0)


def test_only_full_attention_without_a_window_is_packed(tiny, tiny_model_dir):
    import copy

    model, _, _ = tiny
    assert decoding.full_attention(model)
    for setting in ({"sliding_window": 4}, {"attention_chunk_size": 8}, {"alibi": True},
                    {"layer_types": ["full_attention", "sliding_attention"]}):
        changed = copy.copy(model)
        changed.config = copy.deepcopy(model.config)
        for key, value in setting.items():
            setattr(changed.config, key, value)
        assert not decoding.full_attention(changed), setting
    mamba = copy.copy(model)
    mamba.config = copy.deepcopy(model.config)
    mamba.config.layer_types = ["full_attention", "mamba"]
    with pytest.raises(ValueError, match="mamba layers"):
        decoding.prompt(mamba, [[1, 2]], 0)


def test_draws_over_a_real_vocabulary_follow_its_softmax():
    """SmolLM2's 49152 tokens, logits spread as a language model's: the frequencies of the 20 likeliest tokens
    and of the rest match their probabilities (a chi-square test, 20 degrees of freedom; 4000 draws expect 22-727
    of each of the 20)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(49152, generator=generator) * 3
    logprobs = torch.log_softmax(logits, -1)
    top = logprobs.topk(20).indices
    expected = torch.cat([logprobs[top].exp(), 1 - logprobs[top].exp().sum(0, keepdim=True)]) * 4000
    torch.manual_seed(1)
    drawn = torch.cat([decoding.draw(logprobs.expand(1000, -1)) for _ in range(4)])  # 1000 x 49152 at a time
    in_top = (drawn[:, None] == top[None]).float()
    observed = torch.cat([in_top.sum(0), (1 - in_top.sum(1)).sum(0, keepdim=True)])
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 45.3, chi2  # the 0.999 quantile at 20 degrees of freedom
