"""Saving a stage's model as a directory peft or transformers alone can load, and the record beside it
of the base it belongs to (`align_base.json`), which later stages read to load that base again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from align.core.errors import AlignError
from align.core.model_config import ModelConfig
from align.core.model_paths import first_line, resolve_model_path

# the file beside an adapter that records how its base was loaded
BASE_FILE = "align_base.json"


def save_loadable(model: Any, tokenizer: Any, directory: Path, config: ModelConfig) -> Path:
    """Weights, tokenizer and base record: a directory peft/transformers alone can load, written whole."""
    from align.core.rundir import replace_dir

    with replace_dir(Path(directory)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_base_record(tmp, config)
    return Path(directory)


# what makes an adapter fit a base: the same architecture at the same sizes
SHAPE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "vocab_size")


def is_sequence_classifier(directory: Path) -> bool:
    """A model directory whose config.json names a sequence-classification architecture (a reward model)."""
    config = Path(directory) / "config.json"
    if not config.is_file():
        return False
    architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in architectures)


def base_shape(path: str) -> dict[str, Any] | None:
    """The architecture and sizes in a local base's config.json; None for a hub id or an unreadable file."""
    try:
        body = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return {k: body.get(k) for k in SHAPE_KEYS} if isinstance(body, dict) else None


def save_base_record(directory: Path, config: ModelConfig) -> None:
    """Record which base and loading settings an adapter belongs to, beside the adapter, with the base's
    shape: the same weights may sit at another path on another machine, but not in another shape."""
    from align.core.base_model import compute_dtype

    path = resolve_model_path(config.name)
    body = {"name": config.name, "path": path, "quantization": config.quantization, "tuning": config.tuning,
            "shape": base_shape(path)}
    if config.quantization == "nf4":  # what loading it again the same way takes (README: the reward model elsewhere)
        body.update(double_quant=config.double_quant, compute_dtype=str(compute_dtype(config)).removeprefix("torch."))
    from align.core.rundir import write_json_atomic

    write_json_atomic(Path(directory) / BASE_FILE, body)


def recorded_base(directory: Path) -> dict[str, Any]:
    """The base record beside an adapter, with `resolved`: where that base is on this machine.

    The name is resolved first (the embedded model's cache moves between machines); the path
    recorded at training time is the fallback."""
    path = Path(directory) / BASE_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        name, recorded_path = record["name"], record["path"]
        if record["quantization"] not in ("nf4", "none") or record["tuning"] not in ("lora", "prompt_tuning", "full", "head"):
            raise ValueError(f"quantization {record['quantization']!r} or tuning {record['tuning']!r} unknown")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise AlignError(f"{path}: damaged base record ({type(e).__name__}: {first_line(e)}); "
                         f"it should name the base model the weights belong to") from None
    try:
        record["resolved"] = resolve_model_path(name)
    except AlignError:
        record["resolved"] = recorded_path
    return record
