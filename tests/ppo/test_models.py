"""PolicyStack: fast adapter switching gives what peft's own set_adapter / disable_adapter give, to the
bit; the reward read from the reference pass equals a pass of its own; sampling under inference mode."""

from __future__ import annotations

import torch

from align.core import modeling
from align.ppo.models import POLICY, REF, TRAINABLE, VALUE, PolicyStack, position_ids


def stack_with_distinct_adapters(model_dir) -> PolicyStack:
    """LoRA B starts at zero, which would hide a wrong switch: give every adapter its own weights."""
    tokenizer = modeling.load_tokenizer(str(model_dir))
    stack = PolicyStack(modeling.ModelConfig(name=str(model_dir), quantization="none"), tokenizer, None)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for params in stack._params.values():
            for p in params:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
        stack.value_head.weight.copy_(torch.randn(stack.value_head.weight.shape, generator=generator))
    return stack


def batch():
    ids = torch.tensor([[3, 3, 40, 41, 42, 43, 44, 45], [50, 51, 52, 53, 54, 55, 56, 57]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    return ids, mask


def peft_logits(stack, ids, mask, adapter):
    """The reference: peft's public API on the wrapped model."""
    if adapter is None:
        with stack.peft.disable_adapter():
            return stack.peft(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits[:, -5:-1]
    stack.peft.set_adapter(adapter)
    return stack.peft(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits[:, -5:-1]


def test_fast_switching_gives_peft_outputs_in_any_order(tiny_model_dir):
    fast, slow = stack_with_distinct_adapters(tiny_model_dir), stack_with_distinct_adapters(tiny_model_dir)
    ids, mask = batch()
    with torch.no_grad():
        expected = {name: peft_logits(slow, ids, mask, name) for name in (POLICY, VALUE, None)}
        # the order of an update: generate/log-probs, reference (base), values, reward (base), then
        # policy and value alternating; repeated names must be no-ops
        for name in (POLICY, REF, VALUE, REF, POLICY, POLICY, VALUE, POLICY, REF):
            got = fast.policy_logits(ids, mask, 4, adapter=name)
            torch.testing.assert_close(got, expected[None if name == REF else name], rtol=0, atol=0)
    assert expected[POLICY].sub(expected[VALUE]).abs().max() > 1e-3  # the adapters do differ


def test_fast_switching_keeps_our_requires_grad_and_the_right_gradients(tiny_model_dir):
    stack = stack_with_distinct_adapters(tiny_model_dir)
    ids, mask = batch()
    for name in (VALUE, POLICY):
        stack.use(name)
        with stack.base_only():
            pass
        for adapter, params in stack._params.items():
            assert all(p.requires_grad == (adapter in TRAINABLE) for p in params), (name, adapter)
    stack.values(ids, mask, 4).sum().backward()
    assert all(p.grad is not None for p in stack._params[VALUE])
    assert all(p.grad is None for p in stack._params[POLICY])
    assert stack.peft.active_adapter == VALUE


def head_on_base_reward(model_dir, directory):
    """A reward model that is a scalar head on the base (reward tuning `head`), as the reward stage saves it."""
    from safetensors.torch import save_file

    from reward.score import HEAD_FILE

    directory.mkdir(parents=True)
    save_file({"weight": torch.randn(1, 64, generator=torch.Generator().manual_seed(3))}, directory / HEAD_FILE)
    modeling.save_base_record(directory, modeling.ModelConfig(name=str(model_dir), quantization="none", tuning="head"))
    return directory


def test_the_reward_read_from_the_reference_pass_equals_a_pass_of_its_own(tiny_model_dir, tmp_path):
    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    reward = head_on_base_reward(tiny_model_dir, tmp_path / "reward")
    stack = PolicyStack(modeling.ModelConfig(name=str(tiny_model_dir), quantization="none"), tokenizer, str(reward))
    assert stack.reward_on_base and not stack.has_ref_adapter
    ids, mask = batch()
    last = torch.tensor([7, 7])
    with torch.no_grad():
        stack.policy_logits(ids, mask, 4, adapter=REF)
        reused = stack.rewards(ids.clone(), mask.clone(), last)  # equal tokens, other tensors: as the rollout calls it
        assert stack._base_pass is None  # used once, then dropped
        own_pass = stack.rewards(ids, mask, last)
        stack.policy_logits(ids, mask, 4, adapter=REF)
        other_tokens = stack.rewards(ids.flip(0), mask.flip(0), last)  # not the kept pass: a pass of its own
        expected_other = stack.rewards(ids.flip(0), mask.flip(0), last)
    torch.testing.assert_close(reused, own_pass, rtol=0, atol=0)
    torch.testing.assert_close(other_tokens, expected_other, rtol=0, atol=0)
    with torch.enable_grad():  # a training-time reference pass keeps nothing
        stack.policy_logits(ids, mask, 4, adapter=REF)
    assert stack._base_pass is None


def test_sampling_under_inference_mode_gives_the_same_tokens_as_a_normal_tensor(tiny_model_dir):
    stack = stack_with_distinct_adapters(tiny_model_dir)
    ids, mask = batch()
    settings = {"do_sample": True, "temperature": 0.7, "top_k": 0, "max_new_tokens": 6, "pad_token_id": 3,
                "use_cache": True}
    torch.manual_seed(5)
    out = stack.generate(ids, mask, **settings)
    torch.manual_seed(5)
    with torch.no_grad():
        expected = stack.peft.generate(input_ids=ids, attention_mask=mask, **settings)
    assert torch.equal(out, expected) and not out.is_inference()
    # the update embeds sampled ids with gradients flowing into the adapters
    stack.policy_logits(out, torch.ones_like(out), 6).sum().backward()
    assert all(p.grad is not None for p in stack._params[POLICY])
