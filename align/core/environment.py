"""What a run ran on: package versions, Python, devices and caches (`align env`, the manifest, config.yaml).

    versions      align, Python and the libraries a run's figures depend on
    header        the same as YAML comment lines, for a stage's config.yaml
    report        `align env`: versions, devices, caches and the settings that change behaviour
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform

PACKAGES = ("align", "torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "evaluate", "wandb")


@functools.cache
def versions() -> dict[str, str]:
    """{"python": ..., package: version or "not installed"} for align and its libraries (read once a process:
    the manifest is written after every stage)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def header() -> str:
    """Comment lines naming the versions: YAML readers skip them, a reader of the file sees them."""
    return "# ran with " + ", ".join(f"{k} {v}" for k, v in versions().items()) + "\n"


def devices() -> list[str]:
    import torch

    found = [f"cuda:{i} {torch.cuda.get_device_name(i)} "
             f"({torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB)"
             for i in range(torch.cuda.device_count())]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [*found, f"cpu: {cores} cores available, torch threads {torch.get_num_threads()}"]


def report() -> str:
    """`align env`, as `trl env` reports: paste it into an issue."""
    from align.core import malloc
    from align.core.memory import available_bytes
    from align.core.model_paths import cache_root

    lines = [f"- {k}: {v}" for k, v in versions().items()]
    lines.append(f"- platform: {platform.platform()}")
    lines += [f"- device: {d}" for d in devices()]
    available = available_bytes()
    if available is not None:
        lines.append(f"- memory available: {available / 2**30:.1f} GiB")
    allocator = "tbbmalloc" if malloc.in_use() else "the system's"
    lines.append(f"- malloc: {allocator} ({malloc.ENV}={os.environ.get(malloc.ENV, '(unset)')})")
    lines.append(f"- align cache (ALIGN_CACHE): {cache_root()}")
    lines.append(f"- Hugging Face cache (HF_HOME): {os.environ.get('HF_HOME', os.path.expanduser('~/.cache/huggingface'))}")
    for name in ("HF_HUB_OFFLINE", "WANDB_MODE", "CUDA_VISIBLE_DEVICES"):
        lines.append(f"- {name}: {os.environ.get(name, '(unset)')}")
    return "\n".join(lines)
