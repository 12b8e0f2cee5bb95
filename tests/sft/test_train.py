"""SFT on the tiny model: the eval loss falls, outputs follow the contract, resume continues."""

from __future__ import annotations

import json

import pytest
import yaml

from align.core import rundir
from align.core.config import load_config
from align.core.errors import AlignError
from sft.config import SFTConfig
from sft.train import train

from tests.conftest import DEMO


def tiny_config(model_dir, out_dir, *extra):
    return load_config(SFTConfig, None, [
        f"out_dir={out_dir}", f"model.name={model_dir}", f"data.train={DEMO / 'sft.jsonl'}",
        "data.max_records=96", "data.eval_fraction=0.1", "model.lora.r=16", "model.lora.dropout=0.0",
        "training.batch_size=8", "training.learning_rate=5e-3", "training.epochs=2", "training.max_length=64",
        "training.save_steps=8", "tracking.wandb=false", "tracking.logging_steps=4", *extra,
    ])


@pytest.fixture(scope="module")
def qlora_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "run"
    figures = train(tiny_config(tiny_model_dir, out))
    return out, figures


def test_qlora_sft_lowers_eval_loss(qlora_run):
    _, figures = qlora_run
    assert figures["eval/loss"] < 0.8 * figures["eval/loss_before"]
    assert figures["train/steps"] == 24  # 96 records / batch 8 x 2 epochs
    assert 0 < figures["params/trainable"] < figures["params/total"]


def test_qlora_adapters_train_in_fp32_where_bf16_is_slow(qlora_run):
    """TRL casts a 4-bit base's adapters to bf16; on a CPU that made the demo's SFT step 2.6x slower."""
    import torch
    from safetensors.torch import load_file

    from align.core import modeling

    out, _ = qlora_run
    expected = torch.bfloat16 if modeling.bf16_is_fast() else torch.float32
    assert {t.dtype for t in load_file(out / "adapter" / "adapter_model.safetensors").values()} == {expected}


def test_final_weights_are_evaluated_once(qlora_run):
    """The trainer evaluates at the end of the last epoch; its figure is the final one, not a second pass."""
    out, figures = qlora_run
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = [r["eval/loss"] for r in logged if "eval/loss" in r and r["step"] == figures["train/steps"]]
    assert final == [figures["eval/loss"]]


def test_no_held_out_split_trains_without_evaluation(tiny_model_dir, tmp_path):
    figures = train(tiny_config(tiny_model_dir, tmp_path / "run", "model.quantization=none", "data.eval_fraction=0",
                                "training.max_steps=2"))
    assert figures["train/steps"] == 2 and figures["data/eval_records"] == 0
    assert not any(key.startswith("eval/") for key in figures)


def test_outputs_follow_the_stage_contract(qlora_run):
    out, figures = qlora_run
    for name in ("config.yaml", "metrics.json", "metrics.jsonl", "status.json", "adapter/adapter_config.json"):
        assert (out / name).exists(), name
    assert json.loads((out / "status.json").read_text())["state"] == "done"
    assert json.loads((out / "metrics.json").read_text()) == figures
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 24
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["training"]["learning_rate"] == 5e-3 and resolved["model"]["lora"]["r"] == 16


def test_adapter_loads_with_peft_alone_and_generates(qlora_run):
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    out, _ = qlora_run
    tokenizer = AutoTokenizer.from_pretrained(out / "adapter")
    assert tokenizer.pad_token != tokenizer.eos_token
    model = AutoPeftModelForCausalLM.from_pretrained(out / "adapter")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        generated = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > ids["input_ids"].shape[1]


def test_finished_run_is_refused_without_overwrite(qlora_run, tiny_model_dir):
    out, _ = qlora_run
    with pytest.raises(AlignError, match="already holds a finished run"):
        train(tiny_config(tiny_model_dir, out))


def test_resume_continues_from_the_newest_checkpoint(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(tiny_model_dir, out, "model.quantization=none", "training.max_steps=8", "training.epochs=1")
    train(config)
    # pretend the run was killed after its checkpoint at step 8: resume it towards 16 steps
    (out / "status.json").write_text(json.dumps({"state": "failed", "error": "killed"}))
    more = tiny_config(tiny_model_dir, out, "model.quantization=none", "training.max_steps=16", "training.epochs=1")
    figures = train(more, resume=True)
    assert figures["train/steps"] == 16
    assert "eval/loss_before" in figures  # kept from the first run, not recomputed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [4, 8, 12, 16]  # continued, nothing twice
    assert rundir.StageDir(out).newest_checkpoint().name == "checkpoint-16"
