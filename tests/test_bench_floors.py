"""bench/floors.py: the FLOPs a forward and sampling need, against torch's own count of the matmuls a
model runs (torch.utils.flop_counter), and the bandwidth floor by hand (issue #24)."""

import pytest

from align.core.memory import model_shape
from bench import floors


def _eager_model(tiny_model_dir, lora_r=0):
    """The tiny Llama with eager attention (plain matmuls, which the FLOP counter sees), LoRA on every block
    projection when lora_r > 0."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    if lora_r:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear"))
    return model


def _masked_half(shape, n):
    """What an eager kernel computes on top of causal attention: the scores above the diagonal (and their
    products with V), masked out after being computed."""
    return 4 * shape.layers * shape.hidden * (n * n - n * (n + 1) // 2)


@pytest.mark.parametrize("lora_r", [0, 4])
def test_forward_flops_are_the_matmuls_the_model_runs(tiny_model_dir, lora_r):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    shape = model_shape(tiny_model_dir)
    model = _eager_model(tiny_model_dir, lora_r)
    n = 37
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(input_ids=torch.randint(0, shape.vocab, (1, n)))
    assert counter.get_total_flops() == floors.forward_flops(shape, n, lora_r=lora_r) + _masked_half(shape, n)
    # logits at one position: the output layer's share at the other n - 1 goes
    assert floors.forward_flops(shape, n) - floors.forward_flops(shape, n, logits=1) == \
        2 * shape.hidden * shape.vocab * (n - 1)


def test_sampling_flops_are_the_matmuls_generate_runs(tiny_model_dir):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    shape = model_shape(tiny_model_dir)
    model = _eager_model(tiny_model_dir)
    q, steps = 11, 9
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        out = model.generate(torch.randint(0, shape.vocab, (1, q)), max_new_tokens=steps, min_new_tokens=steps,
                             do_sample=False, use_cache=True, pad_token_id=0)
    assert out.shape[1] == q + steps
    # one row: the prefill's eager attention also scores the keys past each query, the decode steps do not
    assert counter.get_total_flops() == floors.sampling_flops(shape, [q], steps) + _masked_half(shape, q)


def test_the_bandwidth_floor_reads_the_weights_every_step_and_the_cache_so_far(tiny_model_dir):
    shape = model_shape(tiny_model_dir)
    weights = shape.layers * floors.block_weights(shape) + shape.hidden * shape.vocab
    kv_token = 2 * shape.layers * shape.kv_width * 4
    # 2 rows with prompts of 5 and 7 tokens, 3 steps: 3 reads of the weights, then the caches of the 2 decode
    # steps (5 + 6 and 7 + 8 tokens)
    expected = (3 * weights * 4 + kv_token * (5 + 6 + 7 + 8)) / 10e9
    assert floors.sampling_floor_s(shape, [5, 7], 3, bandwidth_gbps=10.0) == pytest.approx(expected, rel=1e-12)
    # 4-bit weights read an eighth of the bytes
    assert floors.step_bytes(shape, bytes_per_weight=0.5) * 8 == floors.step_bytes(shape)


def test_the_machine_rates_are_measured(tiny_model_dir):
    shape = model_shape(tiny_model_dir)
    rate = floors.gemm_gflops(shape, tokens=64, seconds=0.05)
    assert 0.01 < rate < 1e5  # GFLOP/s: a CPU core to a GPU's
    assert 0.1 < floors.copy_gbps(megabytes=16, seconds=0.05) < 1e5  # GB/s
