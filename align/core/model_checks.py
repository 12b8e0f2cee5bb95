"""Checks on a model or adapter directory, made before a stage writes its output directory: it is
there, it holds safetensors weights (never a pickle), and it ships no code to run unless asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from align.core.errors import AlignError
from align.core.model_config import ModelConfig
from align.core.model_paths import resolve_model_path
from align.core.saved_models import BASE_FILE, base_shape, recorded_base


def check_model(config: ModelConfig) -> None:
    """Fail on a model or adapter that is not there, or a model that ships code to run, before a
    stage writes its output directory."""
    path = Path(resolve_model_path(config.name))
    if path.is_dir() and not config.trust_remote_code:
        check_no_custom_code(path)
    if config.adapter:
        check_adapter_dir(Path(config.adapter))
        check_adapter_base(Path(config.adapter), config.name, str(path))


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
