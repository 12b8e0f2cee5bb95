"""PolicyStack: fast adapter switching gives what peft's own set_adapter / disable_adapter give, to the
bit, and its fused LoRA layers peft's gradients; the reward read from the reference pass equals a pass of its own; sampling under inference mode."""

from __future__ import annotations

import pytest
import torch

from align.core import modeling
from align.core.fused_lora import is_fused
from align.ppo.models import POLICY, REF, REWARD, TRAINABLE, VALUE, PolicyStack, position_ids, shared_base


def stack_with_distinct_adapters(model_dir, quantization: str = "none") -> PolicyStack:
    """LoRA B starts at zero, which would hide a wrong switch: give every adapter its own weights."""
    tokenizer = modeling.load_tokenizer(str(model_dir))
    stack = PolicyStack(modeling.ModelConfig(name=str(model_dir), quantization=quantization), tokenizer, None)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for params in stack._params.values():
            for p in params:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
        stack.value_head.weight.copy_(torch.randn(stack.value_head.weight.shape, generator=generator))
    return stack


def unfused(stack: PolicyStack) -> PolicyStack:
    """The stack's LoRA layers on peft's own forward (PolicyStack fuses them: core/fused_lora.py)."""
    layers = [m for m in stack.peft.modules() if is_fused(vars(m).get("forward"))]
    assert len(layers) == 14  # the tiny model's 2 blocks x 7 projections
    for layer in layers:
        vars(layer).pop("forward")
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
    fast, slow = stack_with_distinct_adapters(tiny_model_dir), unfused(stack_with_distinct_adapters(tiny_model_dir))
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


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_fused_layers_give_peft_outputs_and_gradients_for_policy_and_value(tiny_model_dir, quantization):
    fused = stack_with_distinct_adapters(tiny_model_dir, quantization)
    own = unfused(stack_with_distinct_adapters(tiny_model_dir, quantization))
    ids, mask = batch()
    grads, outputs = [], []
    for stack in (fused, own):
        logits = stack.policy_logits(ids, mask, 4)
        logits.logsumexp(-1).sum().backward()
        values = stack.values(ids, mask, 4)
        values.pow(2).sum().backward()
        outputs.append((logits.detach(), values.detach()))
        grads.append({n: p.grad for n, p in stack.named_trainable().items()})
    for got, want in zip(*outputs):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert grads[0].keys() == grads[1].keys() and all(g is not None for g in grads[0].values())
    for name, g in grads[0].items():
        # rounding alone (sums in another order): ~1e-6 of the gradient's norm; a lost scale or term is ~1
        assert (g - grads[1][name]).norm() <= 1e-5 * grads[1][name].norm(), name


def head_on_base_reward(model_dir, directory):
    """A reward model that is a scalar head on the base (reward tuning `head`), as the reward stage saves it."""
    from safetensors.torch import save_file

    from align.reward.score import HEAD_FILE

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


def test_sampling_under_inference_mode_gives_the_same_tokens_as_under_no_grad(tiny_model_dir):
    from align.core import decoding

    stack = stack_with_distinct_adapters(tiny_model_dir)
    ids, mask = batch()
    settings = {"temperature": 0.7, "max_new_tokens": 6, "pad_id": 3, "eos_ids": [2]}
    torch.manual_seed(5)
    out = stack.sample(ids, mask, **settings)
    torch.manual_seed(5)
    with torch.no_grad():
        expected = decoding.sample_queries(stack.peft, ids, mask, **settings)
    assert torch.equal(out.tokens, expected.tokens) and not out.tokens.is_inference()
    torch.testing.assert_close(out.logprobs, expected.logprobs, rtol=0, atol=0)
    # the update embeds sampled ids with gradients flowing into the adapters
    sequences = torch.cat([ids, out.tokens], 1)
    stack.policy_logits(sequences, torch.ones_like(sequences), 6).sum().backward()
    assert all(p.grad is not None for p in stack._params[POLICY])


def lora_reward(model_dir, directory, quantization):
    """A LoRA reward model with a normaliser, as the reward stage saves it; its weights made distinct."""
    import json

    from align.reward.score import NORMALISER

    cfg = modeling.ModelConfig(name=str(model_dir), quantization=quantization, lora=modeling.LoraSettings(r=4, alpha=8))
    tokenizer = modeling.load_tokenizer(str(model_dir))
    model = modeling.attach_tuning(modeling.load_base(cfg, tokenizer, head="score"), cfg, task_type="SEQ_CLS")
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    modeling.save_loadable(model, tokenizer, directory, cfg)
    (directory / NORMALISER).write_text(json.dumps({"mean": 0.5, "std": 2.0}))
    return directory


def sft_adapter(model_dir, directory):
    cfg = modeling.ModelConfig(name=str(model_dir), quantization="none", lora=modeling.LoraSettings(r=2, alpha=4))
    tokenizer = modeling.load_tokenizer(str(model_dir))
    model = modeling.attach_tuning(modeling.load_base(cfg, tokenizer), cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.125)
    modeling.save_loadable(model, tokenizer, directory, cfg)
    return directory


def test_the_shared_base_carries_the_sft_and_reward_models_as_adapters(tiny_model_dir, tmp_path):
    """policy and ref from the SFT adapter, reward and value from the reward model's; only policy, value
    and the value head train, in fp32 on a 4-bit base; no dropout anywhere (N+ details), though the
    config asks for some and the reward model trained with some."""
    from safetensors.torch import load_file

    reward = lora_reward(tiny_model_dir, tmp_path / "reward", "nf4")
    cfg = modeling.ModelConfig(name=str(tiny_model_dir), adapter=str(sft_adapter(tiny_model_dir, tmp_path / "sft")),
                               lora=modeling.LoraSettings(r=8, dropout=0.2))
    stack = PolicyStack(cfg, modeling.load_tokenizer(str(tiny_model_dir)), str(reward))
    assert stack.has_ref_adapter and stack.has_reward_adapter and stack.shares_reward and not stack.reward_on_base
    configs = stack.peft.peft_config
    assert set(configs) == {POLICY, REF, REWARD, VALUE}
    assert {name: c.r for name, c in configs.items()} == {POLICY: 2, REF: 2, REWARD: 4, VALUE: 4}
    for c in configs.values():
        assert c.task_type == "CAUSAL_LM" and c.lora_dropout == 0.0 and not c.modules_to_save and not c.inference_mode
    assert all(m.p == 0.0 for m in stack.peft.modules() if isinstance(m, torch.nn.Dropout))

    assert {name: {p.requires_grad for p in ps} for name, ps in stack._params.items()} == \
        {POLICY: {True}, VALUE: {True}, REF: {False}, REWARD: {False}}
    assert not stack.reward_head.weight.requires_grad and stack.value_head.weight.requires_grad
    assert {p.dtype for p in stack.trainable_parameters()} == {torch.float32}
    assert len(stack.named_trainable()) == len(stack._params[POLICY]) + len(stack._params[VALUE]) + 2

    q_proj = stack.peft.base_model.model.model.layers[0].self_attn.q_proj
    assert torch.all(q_proj.lora_B[POLICY].weight == 0.125) and torch.all(q_proj.lora_B[REF].weight == 0.125)
    saved = load_file(reward / "adapter_model.safetensors")
    b = next(v for k, v in saved.items() if "layers.0.self_attn.q_proj.lora_B" in k)
    torch.testing.assert_close(q_proj.lora_B[REWARD].weight, b, rtol=0, atol=0)
    torch.testing.assert_close(q_proj.lora_B[VALUE].weight, b, rtol=0, atol=0)
    head = next(v for k, v in saved.items() if k.endswith("score.weight"))
    torch.testing.assert_close(stack.reward_head.weight, head.float(), rtol=0, atol=0)
    # the critic starts at the normalised reward: (w·h - 0.5) / 2
    torch.testing.assert_close(stack.value_head.weight, head.float() / 2.0, rtol=0, atol=0)
    assert stack.value_head.bias.item() == -0.25


def test_a_fresh_policy_takes_the_lora_settings_with_dropout_off(tiny_model_dir):
    """On a bf16 base the trained adapters are fp32 all the same; the base stays as loaded."""
    cfg = modeling.ModelConfig(name=str(tiny_model_dir), quantization="none", dtype="bfloat16",
                               lora=modeling.LoraSettings(r=4, alpha=12, dropout=0.2, target_modules=["q_proj", "v_proj"]))
    stack = PolicyStack(cfg, modeling.load_tokenizer(str(tiny_model_dir)), None)
    assert {p.dtype for p in stack.trainable_parameters()} == {torch.float32}
    assert stack.peft.get_input_embeddings().weight.dtype == torch.bfloat16
    assert set(stack.peft.peft_config) == {POLICY, VALUE} and not stack.has_ref_adapter and not stack.shares_reward
    for c in stack.peft.peft_config.values():
        assert (c.r, c.lora_alpha, c.lora_dropout, c.task_type) == (4, 12, 0.0, "CAUSAL_LM")
        assert c.target_modules == {"q_proj", "v_proj"}
    assert all(p.requires_grad for name in TRAINABLE for p in stack._params[name])
    assert stack.value_head.weight.abs().sum() == 0 and stack.value_head.bias.item() == 0  # no reward head to start from


def test_the_shared_base_turns_every_dropout_off(tiny_model_dir, tmp_path):
    """N+ details: dropout off, or the ratio starts away from 1. The tiny Llama has no dropout modules;
    GPT-NeoX (Pythia, the N+ models) has them."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    neox = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=64, hidden_dropout=0.1)
    GPTNeoXForCausalLM(neox).save_pretrained(tmp_path / "neox")
    base = shared_base(modeling.ModelConfig(name=str(tmp_path / "neox"), quantization="none"), tokenizer, False)
    dropouts = [m for m in base.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0.0 for m in dropouts)
