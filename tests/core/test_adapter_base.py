"""An adapter trained on one base, given to a stage on another: refused in one line before a model loads."""

from __future__ import annotations

import json

from click.testing import CliRunner

from align.cli import cli
from align.core import modeling
from align.core.saved_models import SHAPE_KEYS


def fake_adapter(directory, shape: dict) -> str:
    """What check_model reads of an adapter directory: its files, and align's record of its base."""
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x", "peft_type": "LORA"}))
    (directory / "adapter_model.safetensors").write_bytes(b"")
    (directory / modeling.BASE_FILE).write_text(json.dumps(
        {"name": "other-model", "path": "/nowhere", "quantization": "none", "tuning": "lora", "shape": shape}))
    return str(directory)


def tiny_shape(tiny_model_dir) -> dict:
    body = json.loads((tiny_model_dir / "config.json").read_text())
    return {k: body.get(k) for k in SHAPE_KEYS}


def test_an_adapter_of_another_base_is_refused_before_loading(tiny_model_dir, tmp_path):
    shape = {**tiny_shape(tiny_model_dir), "hidden_size": 576, "num_hidden_layers": 30}
    adapter = fake_adapter(tmp_path / "adapter", shape)
    result = CliRunner().invoke(cli, ["reward", "--set", f"model.name={tiny_model_dir}", "--set", f"model.adapter={adapter}",
                                      "--out", str(tmp_path / "out"), "--set", "tracking.wandb=false"])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    hidden = tiny_shape(tiny_model_dir)["hidden_size"]
    assert line == (f"error: model.adapter {adapter} was trained on 'other-model', and model.name {str(tiny_model_dir)!r} "
                    f"is another model (hidden_size 576 vs {hidden}, num_hidden_layers 30 vs 2): "
                    f"set model.name=other-model, or give an adapter trained on {tiny_model_dir}")
    assert not (tmp_path / "out").exists()


def test_the_same_shape_at_another_path_is_the_same_base(tiny_model_dir, tmp_path):
    """The base moved (another machine, another cache): its shape, not its path, decides."""
    adapter = fake_adapter(tmp_path / "adapter", tiny_shape(tiny_model_dir))
    modeling.check_model(modeling.ModelConfig(name=str(tiny_model_dir), adapter=adapter))


def test_the_record_holds_the_base_shape(tiny_model_dir, tmp_path):
    modeling.save_base_record(tmp_path, modeling.ModelConfig(name=str(tiny_model_dir)))
    assert json.loads((tmp_path / modeling.BASE_FILE).read_text())["shape"] == tiny_shape(tiny_model_dir)


def test_lora_settings_other_than_the_adapters_are_named(tmp_path):
    from align.core.model_checks import lora_settings_in_conflict
    from align.core.model_config import LoraSettings

    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 64, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["v_proj", "q_proj"]}))
    assert lora_settings_in_conflict(LoraSettings(r=64, alpha=16, dropout=0.05), tmp_path) == []
    assert lora_settings_in_conflict(LoraSettings(r=16, alpha=32, dropout=0.05, target_modules=["q_proj", "v_proj"]),
                                     tmp_path) == ["model.lora.r = 16, the adapter's 64", "model.lora.alpha = 32, the adapter's 16"]
    assert lora_settings_in_conflict(LoraSettings(r=64, alpha=16, target_modules=["q_proj"]), tmp_path) == [
        "model.lora.target_modules = ['q_proj'], the adapter's ['q_proj', 'v_proj']"]
    # not given (every default): nothing to compare; PPO switches dropout off, so its dropout is not compared
    assert lora_settings_in_conflict(LoraSettings(), tmp_path) == []
    assert lora_settings_in_conflict(LoraSettings(r=64, alpha=16, dropout=0.0), tmp_path, dropout_applies=False) == []
    assert lora_settings_in_conflict(LoraSettings(r=64, alpha=16, dropout=0.0), tmp_path) == [
        "model.lora.dropout = 0.0, the adapter's 0.05"]


def test_lora_settings_given_with_an_adapter_that_has_others_are_refused_before_loading(tiny_model_dir, tmp_path):
    adapter = fake_adapter(tmp_path / "adapter", tiny_shape(tiny_model_dir))
    body = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**body, "r": 16, "lora_alpha": 32, "lora_dropout": 0.05}))
    for stage in ("sft", "reward", "dpo", "ppo"):
        result = CliRunner().invoke(cli, [stage, "--set", f"model.name={tiny_model_dir}", "--set", f"model.adapter={adapter}",
                                          "--set", "model.lora.r=64", "--out", str(tmp_path / stage),
                                          "--set", "tracking.wandb=false"])
        assert result.exit_code == 2, (stage, result.output)
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert errors == [f"error: model.adapter {adapter} keeps its own LoRA settings, and model.lora differs: "
                          f"model.lora.r = 64, the adapter's 16. Leave model.lora out, or set it to the adapter's"], stage
        assert not (tmp_path / stage).exists()
