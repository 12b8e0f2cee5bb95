"""LoRA layers as one autograd node (core/fused_lora.py): peft's outputs and gradients, its own forward where
the fused one would not give them, and the bf16 input gradient where it is asked for and pays."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from align.core import fused_lora
from align.core.fused_lora import backward_dtype, fuse_lora, lora_linear
from align.core.sampling_weights import sampling_weights


class Block(nn.Module):
    def __init__(self, width: int = 16, bias: bool = True):
        super().__init__()
        self.up = nn.Linear(width, 2 * width, bias=bias)
        self.down = nn.Linear(2 * width, width, bias=bias)

    def forward(self, x):
        return self.down(torch.tanh(self.up(x)))


def lora_block(*, width: int = 16, dropout: float = 0.0, bias: bool = True) -> nn.Module:
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["up", "down"])
    peft = get_peft_model(Block(width, bias), config, adapter_name="one")
    peft.add_adapter("two", config)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    for name, p in peft.named_parameters():
        p.requires_grad_("lora_" in name)
    return peft


def lora_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def output_and_grads(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = model(x)
    out.pow(2).sum().backward()
    grads = [p.grad.clone() for n, p in model.named_parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return [out.detach(), x.grad, *grads]


def assert_all_close(a: list[torch.Tensor], b: list[torch.Tensor], **tol) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, **tol)


def test_fused_layers_give_peft_outputs_and_gradients_for_each_adapter_and_the_base():
    model, x = lora_block(), torch.randn(3, 5, 16)
    own = {}
    for adapter in ("one", "two"):
        model.set_adapter(adapter)
        own[adapter] = output_and_grads(model, x)
    with model.disable_adapter():
        own_base = output_and_grads(model, x)[:2]
    assert fuse_lora(model) == 2
    assert fuse_lora(model) == 0  # already fused: left as it is
    for adapter in ("one", "two"):
        model.set_adapter(adapter)
        fused = output_and_grads(model, x)
        assert_all_close(fused, own[adapter], rtol=1e-6, atol=1e-6)
        assert len(fused) == 2 + 4  # x, and A and B of both layers: the active adapter's
    with model.disable_adapter():
        assert_all_close(output_and_grads(model, x)[:2], own_base, rtol=1e-6, atol=1e-6)
    assert own["one"][0].sub(own["two"][0]).abs().max() > 1e-2  # the two adapters are told apart


def test_the_function_is_the_sum_of_its_products_with_and_without_a_bias():
    torch.manual_seed(1)
    x, a, b = torch.randn(6, 8), torch.randn(3, 8), torch.randn(5, 3)
    for bias in (False, True):
        base = nn.Linear(8, 5, bias=bias)
        expected = x @ base.weight.T + 2.5 * (x @ a.T) @ b.T + (0 if base.bias is None else base.bias)
        torch.testing.assert_close(lora_linear(x, base, a, b, 2.5), expected)


class MaskDropout(nn.Module):
    """peft's dropout slot given keep_mask's masks, drawn in the order the fused layers draw them."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training:
            return x
        keep, share = fused_lora.keep_mask(x.reshape(-1, x.shape[-1]).shape, self.p, x.device)
        return x * keep.view(x.shape) / share


def test_live_dropout_gives_peft_outputs_and_gradients_under_the_same_masks():
    x = torch.randn(6, 16)
    model = lora_block(dropout=0.3).train()
    fuse_lora(model)
    torch.manual_seed(3)
    fused = output_and_grads(model, x)
    for layer in lora_layers(model):
        del layer.forward  # peft's own forward, its dropout drawing keep_mask's masks from the same seed
        layer.lora_dropout["one"] = MaskDropout(0.3)
    torch.manual_seed(3)
    # 1 / (1 - p) on the rank-r products, not the input: the same sums rounded in another order
    assert_all_close(fused, output_and_grads(model, x), rtol=1e-5, atol=1e-5)
    torch.manual_seed(4)
    assert not torch.allclose(output_and_grads(model, x)[0], fused[0], rtol=1e-3, atol=1e-3)  # other masks
    model.eval()  # no dropout: another output
    assert not torch.allclose(model(x), fused[0], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("p", [0.05, 0.5])
def test_dropout_masks_keep_one_minus_p_in_every_position_independently(p):
    torch.manual_seed(0)
    keep, share = fused_lora.keep_mask((999, 1001), p, torch.device("cpu"))  # an odd count: the last draw halved
    assert keep.shape == (999, 1001) and keep.dtype == torch.bool
    assert share == pytest.approx(1 - p, abs=1 / fused_lora.DROPOUT_LEVELS)
    flat = keep.view(-1).float()
    sigma = (share * (1 - share) / (flat.numel() / 2)) ** 0.5
    for half in (flat[0::2], flat[1::2]):  # the low and the high bits of each draw
        assert half.mean().item() == pytest.approx(share, abs=5 * sigma)
    pairs = flat[:-1].view(-1, 2)  # one draw's two elements, then neighbouring draws
    for u, v in ((pairs[:, 0], pairs[:, 1]), (flat[1:-1:2], flat[2::2])):
        assert ((u * v).mean() - u.mean() * v.mean()).abs().item() < 5 * sigma
    torch.manual_seed(0)
    assert torch.equal(fused_lora.keep_mask((999, 1001), p, torch.device("cpu"))[0], keep)  # the seed decides


def test_dropout_masks_refuse_a_p_that_keeps_nothing_or_is_negative():
    for p in (1.0, 1 - 1e-6, -0.1):
        with pytest.raises(ValueError, match="keep_mask needs 0 <= p"):
            fused_lora.keep_mask((4, 4), p, torch.device("cpu"))


def test_calls_it_does_not_serve_go_to_peft_forward():
    x = torch.randn(2, 16)
    # two adapters active at once
    model = lora_block().eval()
    for layer in lora_layers(model):
        layer.set_adapter(["one", "two"])
    expected = model(x)
    fuse_lora(model)
    assert torch.equal(model(x), expected)
    # adapters in another dtype than the input: peft casts between them
    model = lora_block().eval()
    for layer in lora_layers(model):
        layer.lora_A["one"].double()
        layer.lora_B["one"].double()
    expected = model(x)
    fuse_lora(model)
    assert torch.equal(model(x), expected)


def test_bf16_input_gradients_where_they_pay_and_fp32_elsewhere():
    width, rows = 256, 256  # 256 rows x 256 x 512 multiply-adds: past both thresholds
    assert rows >= fused_lora.BF16_FROM_ROWS and rows * width * 2 * width >= fused_lora.BF16_FROM_MACS
    model, x = lora_block(width=width), torch.randn(rows, width)
    exact = output_and_grads(model, x)
    fuse_lora(model, "bf16")
    rounded = output_and_grads(model, x)
    torch.testing.assert_close(rounded[0], exact[0], rtol=1e-6, atol=1e-6)  # the forward pass: fp32
    x_grad_error = (rounded[1] - exact[1]).norm() / exact[1].norm()
    assert 1e-5 < x_grad_error < 1e-2  # bf16: not fp32's answer, and near it
    for got, want in zip(rounded[2:], exact[2:]):  # the adapters' gradients, downstream of it
        assert (got - want).norm() / want.norm() < 1e-2
    # too few rows for the casts to pay: fp32
    few = x[: fused_lora.BF16_FROM_ROWS - 1]
    model_fp32 = lora_block(width=width)
    assert_all_close(output_and_grads(model, few), output_and_grads(model_fp32, few), rtol=1e-6, atol=1e-6)


def test_backward_dtype_settings(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert backward_dtype("fp32", cpu) is None
    assert backward_dtype("bf16", cpu) is torch.bfloat16 and backward_dtype("bf16", cuda) is torch.bfloat16
    assert backward_dtype("auto", cuda) is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert backward_dtype("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert backward_dtype("auto", cpu) is None


def test_a_working_copy_replaces_fused_layers_while_sampling_and_gives_them_back():
    model, x = lora_block().eval(), torch.randn(4, 16)
    fuse_lora(model)
    fused = {id(layer): vars(layer)["forward"] for layer in lora_layers(model)}
    with torch.no_grad():
        expected = model(x)
        with sampling_weights(model, rows=4) as copied:
            assert copied == 2
            assert all(vars(layer)["forward"] is not fused[id(layer)] for layer in lora_layers(model))
            torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert all(vars(layer)["forward"] is fused[id(layer)] for layer in lora_layers(model))


def test_a_zero3_partitioned_base_weight_goes_to_peft_forward():
    model, x = lora_block().eval(), torch.randn(3, 16)
    expected = model(x)
    fuse_lora(model)
    layer = lora_layers(model)[0]
    layer.get_base_layer().weight.ds_id = 7  # as DeepSpeed marks the parameters it partitions
    seen = []
    layer.lora_A["one"].register_forward_hook(lambda *args: seen.append(1))  # only peft's forward calls lora_A
    torch.testing.assert_close(model(x), expected, rtol=1e-6, atol=1e-6)
    assert seen == [1]


def test_layers_over_hooked_or_non_linear_bases_keep_their_forward():
    model = lora_block()
    layers = lora_layers(model)
    layers[0].get_base_layer().register_forward_hook(lambda *args: None)
    assert fuse_lora(model) == 1
    assert "forward" not in vars(layers[0]) and "forward" in vars(layers[1])


@pytest.mark.parametrize("bias", [False, True])
def test_gradient_checkpointed_passes_give_the_same_gradients(bias):
    from torch.utils.checkpoint import checkpoint

    model, x = lora_block(bias=bias), torch.randn(3, 16)
    fuse_lora(model)
    plain = output_and_grads(model, x)
    x = x.clone().requires_grad_(True)
    checkpoint(model.base_model.model, x, use_reentrant=False).pow(2).sum().backward()
    grads = [x.grad, *[p.grad for p in model.parameters() if p.grad is not None]]
    assert_all_close(grads, plain[1:], rtol=1e-6, atol=1e-6)


def test_a_base_that_trains_its_own_bias_goes_to_peft_forward():
    """peft's bias="all": the base's bias is trainable, and the fused product (the base run without autograd)
    would leave it without a gradient."""
    torch.manual_seed(0)
    model = get_peft_model(Block(), LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"], bias="all"))
    x = torch.randn(3, 16)
    own = output_and_grads(model, x)
    fuse_lora(model)
    fused = output_and_grads(model, x)
    assert len(fused) == len(own) == 2 + 4 + 2  # x, A and B of two layers, two biases
    assert_all_close(fused, own, rtol=1e-6, atol=1e-6)


def test_the_output_is_a_tensor_of_its_own_that_callers_may_change_in_place():
    model, x = lora_block(), torch.randn(2, 3, 16, requires_grad=True)
    fuse_lora(model)
    up = lora_layers(model)[0]
    y = up(x)
    y.add_(1.0)  # a residual added in place: a view made inside the function would refuse it
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_a_weight_changed_in_place_before_backward_fails_as_autograd_would():
    model, x = lora_block(), torch.randn(3, 16, requires_grad=True)
    fuse_lora(model)
    y = model(x).sum()
    with torch.no_grad():
        lora_layers(model)[1].get_base_layer().weight.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_a_deep_copy_computes_with_its_own_weights():
    import copy

    model, x = lora_block().eval(), torch.randn(3, 16)
    fuse_lora(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
        expected = twin(x)
        for layer in lora_layers(twin):
            vars(layer).pop("forward")  # peft's own forward on the copy's weights
        torch.testing.assert_close(expected, twin(x), rtol=1e-6, atol=1e-6)
        assert not torch.allclose(model(x), expected)


def test_dropout_of_one_goes_to_peft_forward():
    model, x = lora_block(dropout=1.0).train(), torch.randn(3, 16)
    expected = model(x)
    fuse_lora(model)
    torch.testing.assert_close(model(x), expected)
    assert torch.isfinite(model(x)).all()
