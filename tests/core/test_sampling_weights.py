"""Sampling on a working copy of the linear weights (core/sampling_weights.py): the same outputs as the
model's own layers up to float rounding, the model untouched, and the layers it cannot copy left alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from align.core.memory import model_shape
from align.core.sampling_weights import copy_bytes, packs, sampling_weights


def lora_model(model_dir, *, dropout: float = 0.0, **lora):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", **lora)
    peft = get_peft_model(model, config, adapter_name="one")
    peft.add_adapter("two", config)
    with torch.no_grad():  # adapters that change the output, each its own way
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return peft.eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def state(model):
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


@pytest.mark.parametrize("rows", [1, 2, 4])
def test_the_copy_gives_the_adapters_output_and_leaves_the_model_as_it_was(tiny_model_dir, rows):
    model = lora_model(tiny_model_dir)
    torch.manual_seed(rows)
    ids = torch.randint(0, 200, (rows, 7))
    before = state(model)
    for adapter in ("one", "two"):
        model.set_adapter(adapter)
        own = logits(model, ids)
        with sampling_weights(model, rows) as copied:
            # 2 blocks x 7 LoRA layers; from 4 rows the output layer is packed too
            assert copied == 14 + (rows >= 4)
            on_copy = logits(model, ids)
        # W + s B A in one product against the two: rounding (1.6e-5 seen on an unseeded draw)
        torch.testing.assert_close(on_copy, own, rtol=1e-5, atol=5e-5)
        assert torch.equal(logits(model, ids), own)  # the layers' own forward back
    assert all(torch.equal(before[n], p) for n, p in state(model).items())
    assert not any("forward" in vars(m) for m in model.modules())


def test_the_adapters_count_a_copy_that_would_not_have_them_fails(tiny_model_dir):
    """The merge is what carries the adapter: a copy of the base alone gives the base's logits, not the
    adapter's, and the comparison above tells the two apart."""
    model = lora_model(tiny_model_dir)
    ids = torch.randint(0, 200, (4, 7))
    with_adapter = logits(model, ids)
    with model.disable_adapter():
        base = logits(model, ids)
        with sampling_weights(model, 4):
            torch.testing.assert_close(logits(model, ids), base, rtol=1e-5, atol=1e-5)
    assert (with_adapter - base).abs().max() > 1e-2


def test_a_copy_is_built_from_the_adapter_as_it_is_on_entry(tiny_model_dir):
    model = lora_model(tiny_model_dir)
    ids = torch.randint(0, 200, (4, 7))
    with sampling_weights(model, 4):
        first = logits(model, ids)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B.one" in name:
                p.mul_(-1)
    with sampling_weights(model, 4):
        torch.testing.assert_close(logits(model, ids), logits_without_copy(model, ids), rtol=1e-5, atol=1e-5)
    assert (logits_without_copy(model, ids) - first).abs().max() > 1e-2


def logits_without_copy(model, ids):
    saved = {m: vars(m).pop("forward") for m in model.modules() if "forward" in vars(m)}
    try:
        return logits(model, ids)
    finally:
        for m, f in saved.items():
            m.forward = f


def test_layers_whose_merge_would_change_their_output_keep_their_own_forward(tiny_model_dir):
    """Live dropout in training mode, and DoRA (its magnitude rescales the merged weight)."""
    model = lora_model(tiny_model_dir, dropout=0.5).train()
    with sampling_weights(model, 4) as copied:
        assert copied == 1  # the output layer alone
    model = lora_model(tiny_model_dir, use_dora=True)
    ids = torch.randint(0, 200, (4, 7))
    own = logits(model, ids)
    with sampling_weights(model, 4) as copied:
        assert copied == 1
        torch.testing.assert_close(logits(model, ids), own, rtol=1e-5, atol=1e-5)


def test_plain_layers_are_only_packed_where_packing_serves(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    linear = sum(type(m) is nn.Linear for m in model.modules())
    with sampling_weights(model, 1) as copied:
        assert copied == 0  # one row: a copy of an unmerged weight gains nothing
    with sampling_weights(model, 8) as copied:
        assert copied == (linear if packs(torch.device("cpu"), torch.float32, 8) else 0)
    assert not packs(torch.device("cpu"), torch.bfloat16, 8) and not packs(torch.device("cpu"), torch.float32, 2)


def test_the_sampling_copy_is_sized_from_the_shape(tiny_model_dir):
    """copy_bytes: every weight but the input embedding (the output layer is tied to it here), in fp32; a
    quantised base copies the output layer alone."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    shape = model_shape(tiny_model_dir)
    linear = sum(m.weight.numel() for m in model.modules() if type(m) is nn.Linear)
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert shape.tied and copy_bytes(shape, quantised=False) == pytest.approx((linear + norms) * 4, rel=0.01)  # + the file header
    assert copy_bytes(shape, quantised=True) == shape.vocab * shape.hidden * 4


class TwoLayers(nn.Module):
    """Linear layers with biases (the tiny Llama has none), under LoRA adapters."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 8)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def two_adapters():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["a", "b"])
    model = get_peft_model(TwoLayers(), config, adapter_name="one")
    model.add_adapter("two", config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model.eval()


def test_biases_and_several_active_adapters_are_in_the_copy():
    model = two_adapters()
    model.base_model.set_adapter(["one", "two"])
    x = torch.randn(4, 16)
    with torch.no_grad():
        own = model(x)
        model.base_model.set_adapter("one")
        one_only = model(x)
        model.base_model.set_adapter(["one", "two"])
        with sampling_weights(model, 4) as copied:
            assert copied == 2
            torch.testing.assert_close(model(x), own, rtol=1e-5, atol=1e-5)
    assert (own - one_only).abs().max() > 1e-2  # the second adapter counts


def test_merged_adapters_nested_copies_and_keyword_calls_keep_the_layers_own_forward():
    model = two_adapters()
    x = torch.randn(4, 16)
    layer = model.base_model.model.a
    with torch.no_grad():
        model.base_model.set_adapter("two")
        by_two = layer(x)
        model.base_model.set_adapter("one")
        with sampling_weights(model, 4) as outer:
            with sampling_weights(model, 4) as inner:  # already on their copies: left alone, not undone
                assert (outer, inner) == (2, 0)
            # rows that name another adapter (peft's mixed batches) are not the copy's: the layer's own forward
            torch.testing.assert_close(layer(x, adapter_names=["two"] * 4), by_two, rtol=1e-5, atol=1e-5)
            assert (layer(x) - by_two).abs().max() > 1e-2
        assert not any("forward" in vars(m) for m in model.modules())
        model.merge_adapter()  # the adapter in the base weight: peft's own forward knows how to take it out
        merged = model(x)
        with sampling_weights(model, 4) as copied:
            assert copied == 0
            torch.testing.assert_close(model(x), merged)
            with model.disable_adapter():
                base = model(x)
        assert (merged - base).abs().max() > 1e-2
