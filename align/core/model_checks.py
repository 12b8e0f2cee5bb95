"""Checks on a model or adapter directory, made before a stage writes its output directory: it is
there, it holds safetensors weights (never a pickle), and it ships no code to run unless asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from align.core.errors import AlignError
from align.core.model_config import LoraSettings, ModelConfig
from align.core.model_paths import resolve_model_path
from align.core.saved_models import BASE_FILE, base_shape, recorded_base


def check_model(config: ModelConfig, *, dropout_applies: bool = True) -> None:
    """Fail on a model or adapter that is not there, a model that ships code to run, or an adapter that
    does not fit the base or the LoRA settings given, before a stage writes its output directory.
    dropout_applies=False: the stage switches LoRA dropout off whatever is set (PPO)."""
    path = Path(resolve_model_path(config.name))
    if path.is_dir() and not config.trust_remote_code:
        check_no_custom_code(path)
    if config.adapter:
        check_adapter_dir(Path(config.adapter))
        check_adapter_base(Path(config.adapter), config.name, str(path))
        if config.tuning == "lora":
            check_adapter_lora(config.lora, Path(config.adapter), dropout_applies)


def check_adapter_lora(settings: LoraSettings, adapter: Path, dropout_applies: bool = True) -> None:
    """A stage continuing a saved LoRA adapter trains it with its own shape and scale (the pipeline starts
    every stage after SFT this way): model.lora set to anything else is refused, naming what differs.
    model.lora left at its defaults is not compared: it was not given."""
    differ = lora_settings_in_conflict(settings, adapter, dropout_applies)
    if differ:
        raise AlignError(f"model.adapter {adapter} keeps its own LoRA settings, and model.lora differs: "
                         f"{'; '.join(differ)}. Leave model.lora out, or set it to the adapter's")


def lora_settings_in_conflict(settings: LoraSettings, adapter: Path, dropout_applies: bool = True) -> list[str]:
    """`model.lora.X = ours, the adapter's Y` for each LoRA setting given (not all defaults) that a stage
    continuing `adapter` could not apply."""
    if settings == LoraSettings():
        return []
    try:
        saved = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []  # the adapter's loading reports it
    if not isinstance(saved, dict) or saved.get("peft_type") != "LORA":
        return []
    pairs = [("r", settings.r, saved.get("r")), ("alpha", settings.alpha, saved.get("lora_alpha"))]
    if dropout_applies:
        pairs.append(("dropout", settings.dropout, saved.get("lora_dropout")))
    if settings.target_modules != ["all-linear"]:  # peft saves all-linear as the module names it found
        pairs.append(("target_modules", sorted(settings.target_modules), sorted(saved.get("target_modules") or [])))
    return [f"model.lora.{name} = {ours}, the adapter's {theirs}" for name, ours, theirs in pairs
            if theirs is not None and ours != theirs]


def check_adapter_base(adapter: Path, name: str, path: str) -> None:
    """An adapter made by align records its base's shape: one of another base is refused before any model
    loads (peft would load it and fail on the first mismatched weight with a long size-mismatch trace)."""
    if not (adapter / BASE_FILE).exists():
        return  # an adapter from elsewhere: peft's load names the mismatch (align.core.tuning.load_adapter)
    record = recorded_base(adapter)
    trained_on, given = record.get("shape"), base_shape(path)
    if trained_on and given and trained_on != given:
        differ = ", ".join(f"{k} {trained_on.get(k)} vs {given.get(k)}" for k in trained_on if trained_on.get(k) != given.get(k))
        raise AlignError(f"model.adapter {adapter} was trained on {record['name']!r}, and model.name {name!r} is another "
                         f"model ({differ}): set model.name={record['name']}, or give an adapter trained on {name}")


def check_no_custom_code(path: Path) -> None:
    """An `auto_map` names classes in Python files shipped with the model. Where transformers has no
    class of its own for the model or tokenizer it would refuse to load it without
    trust_remote_code, mid-stage and with a traceback: refused here instead, before the stage
    directory is written. Where it has one (a local copy of Phi-3, say) it loads its own and runs
    none of the shipped code, as before."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    def known(name: str, body: dict[str, Any]) -> bool:
        if name == "config.json":
            return body.get("model_type") in CONFIG_MAPPING
        cls = body.get("tokenizer_class")
        return isinstance(cls, str) and any(tokenizer_class_from_name(c) is not None
                                            for c in (cls, cls.removesuffix("Fast"), f"{cls}Fast"))

    for name in ("config.json", "tokenizer_config.json"):
        try:
            body = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # a missing or damaged file is the loader's to report
        if isinstance(body, dict) and body.get("auto_map") and not known(name, body):
            raise AlignError(f"{path / name}: auto_map needs model.trust_remote_code=true (align runs no code "
                             f"shipped with a model unless asked, and transformers has no class of its own for it)")


def check_adapter_dir(path: Path) -> None:
    if not (path / "adapter_config.json").exists():
        raise AlignError(f"{path}: not an adapter directory (no adapter_config.json)")
    if not (path / "adapter_model.safetensors").exists():
        # peft would fall back to adapter_model.bin, a pickle that runs code on load
        raise AlignError(f"{path}: no adapter_model.safetensors; align loads weights only from safetensors")
