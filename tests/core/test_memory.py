"""The pre-flight memory estimate's arithmetic, the micro-batches that keep the global batch, and the refusal."""

from __future__ import annotations

import json

import pytest

from align.core import memory
from align.core.errors import AlignError
from align.core.model_config import ModelConfig

MB = 2**20


def shape(**sizes) -> memory.Shape:
    values = {"hidden": 10, "intermediate": 20, "layers": 2, "vocab": 100, "file_bytes": 8000, "weights": 2000}
    return memory.Shape(**{**values, **sizes})


def test_weights_nf4_and_fp32_and_full_tuning():
    s = shape()
    # embedding 100 x 10 = 1000 weights in fp32 (4000 B) + the other 1000 at 0.5625 B (562.5 B)
    assert memory.weight_bytes(s, ModelConfig(quantization="nf4")) == 4562
    # fp32: 2000 x 4; full tuning adds the gradient and AdamW's two moments: x 4
    assert memory.weight_bytes(s, ModelConfig(quantization="none", tuning="lora")) == 8000
    assert memory.weight_bytes(s, ModelConfig(quantization="none", tuning="full")) == 32000


def test_lora_adapters_count_every_linear_layer_with_their_optimiser_state():
    # r=16 x 2 layers x (q, k, v, o: 8 x hidden + gate, up, down: 2 x hidden + 3 x intermediate) = 16 x 2 x 160
    # = 5120 weights, x 16 bytes (weight, gradient, two moments, fp32)
    assert memory.adapter_bytes(shape(), ModelConfig(tuning="lora")) == 5120 * 16
    assert memory.adapter_bytes(shape(), ModelConfig(tuning="full", quantization="none")) == 0


def test_lm_head_fused_tiles_cap_the_logits_and_whole_logits_do_not():
    # TRL's fused head: at most 4096 tokens x 32768 columns a tile, 8 tile-sized fp32 copies
    assert memory.lm_head_bytes(1000, 100, "fused") == 1000 * 100 * 4 * 8
    assert memory.lm_head_bytes(10_000, 49_152, "fused") == 4096 * 32_768 * 4 * 8
    # whole logits (ORPO): tokens x vocab x 4 bytes x 4 copies, no cap
    assert memory.lm_head_bytes(10_000, 49_152, "full") == 10_000 * 49_152 * 4 * 4
    assert memory.lm_head_bytes(10_000, 49_152, "none") == 0


def test_training_peak_adds_the_parts_or_is_the_loading():
    s, model = shape(), ModelConfig(quantization="nf4", tuning="lora")
    # recomputed activations per token: (2 x 10 x 2 layers + 24 x 10 + 8 x 20 = 440 values) x 4 B = 1760 B
    tokens = 64
    expected = memory.RUNTIME_BYTES + 4562 + 5120 * 16 + tokens * 1760 + tokens * 100 * 4 * 8
    assert memory.training_peak(s, model, tokens, recompute=True, head="fused") == expected
    # kept activations: 24 x 10 + 8 x 20 = 400 values a layer x 2 layers x 4 B = 3200 B a token
    kept = memory.training_peak(s, model, tokens, recompute=False, head="fused")
    assert kept - expected == tokens * (3200 - 1760)
    # a checkpoint far larger than what it becomes: loading (imports + twice the file) sets the peak
    big = shape(file_bytes=4 * 2**30)
    assert memory.training_peak(big, model, tokens, recompute=True, head="fused") == memory.RUNTIME_BYTES + 8 * 2**30


def test_smollm2_at_the_sft_preset():
    """SmolLM2-135M NF4 + LoRA r=16, 2 x 1024 tokens recomputed, through the fused head: the SFT and DPO presets
    at max_length 1024 peaked at 3095 and 3127 MB (2026-12-05); the estimate stays just above."""
    smollm2 = memory.Shape(hidden=576, intermediate=1536, layers=30, vocab=49152, file_bytes=538_090_408,
                           weights=134_522_602)
    peak = memory.training_peak(smollm2, ModelConfig(quantization="nf4", tuning="lora"), 2048, recompute=True,
                                head="fused")
    assert 3127 * MB < peak < 3300 * MB


@pytest.mark.parametrize(("batch", "accum", "processes", "budget", "item", "least", "expected"), [
    (8, 2, 1, 2048, 1024, 1, (2, 8)),     # the SFT preset: 2 sequences a pass, 8 passes a step = 16 sequences
    (8, 1, 1, 2048, 2048, 1, (1, 8)),     # a DPO pair at max_length 1024 fills the budget alone
    (8, 1, 1, 3 * 1024, 1024, 1, (2, 4)),  # 3 fit, but 3 does not divide 8: equal micro-batches of 2
    (8, 1, 2, 1 << 20, 64, 1, (4, 1)),    # two processes: each takes 4 and all of it fits
    (6, 1, 1, 4 * 100, 100, 1, (3, 2)),   # 4 fit, the largest divisor of 6 under it is 3
    (8, 1, 1, 100, 1024, 2, (2, 4)),      # KTO: never under 2 rows a pass, whatever the budget
])
def test_micro_batches_keep_the_global_batch(batch, accum, processes, budget, item, least, expected):
    micro = memory.micro_batches(batch, accum, processes, budget, item, least)
    assert tuple(micro) == expected
    assert micro.size * micro.accumulation * processes == batch * accum


def test_model_shape_reads_the_config_and_the_checkpoint(tiny_model_dir, tmp_path):
    s = memory.model_shape(tiny_model_dir)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert (s.hidden, s.intermediate, s.layers, s.vocab) == (64, 128, 2, config["vocab_size"])
    assert s.file_bytes == (tiny_model_dir / "model.safetensors").stat().st_size
    assert s.weights == s.file_bytes // 4  # float32
    heads = config["num_attention_heads"]
    assert s.kv_width == config.get("num_key_value_heads", heads) * (config.get("head_dim") or 64 // heads)
    assert s.tied == config.get("tie_word_embeddings", True)
    assert memory.model_shape(tmp_path / "nowhere") is None


def test_refusal_is_one_line_with_the_figures_and_counts_local_processes(monkeypatch):
    memory.check_fits("SFT", 3 * 2**30, 4 * 2**30, "lower x (now 1)")  # fits: nothing
    memory.check_fits("SFT", None, 1, "lower x (now 1)")  # no estimate: nothing
    with pytest.raises(AlignError) as refused:
        memory.check_fits("SFT", 3 * 2**30, 2 * 2**30, "lower x (now 1)")
    assert str(refused.value) == "SFT needs about 3.0 GB at its peak and 2.0 GB is available: lower x (now 1)"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes on this machine: twice the memory
    with pytest.raises(AlignError, match=r"about 6\.0 GB"):
        memory.check_fits("DPO", 3 * 2**30, 4 * 2**30, "lower x (now 1)")
