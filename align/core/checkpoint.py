"""Resumable training state for our own loops (reward model, PPO).

    checkpoint-N/trainable.safetensors   the trainable weights only (adapters, heads)
    checkpoint-N/optimizer.pt            optimiser state (tensors only: loaded with weights_only=True)
    checkpoint-N/rng.pt                  torch RNG state
    checkpoint-N/state.json              step counters, scheduler and anything else JSON-able

Written to a temp dir and renamed, so a kill never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def trainable(model: Any) -> dict[str, Any]:
    """The parameters a plain training loop updates (those with requires_grad)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(directory: Path, params: dict[str, Any], optimizer: Any, state: dict[str, Any], keep: int = 2,
                    name: str | None = None) -> Path:
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    target = directory / (name or f"checkpoint-{state['step']}")
    tmp = directory / f".tmp-{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: p.detach().cpu().contiguous() for k, p in params.items()}, tmp / "trainable.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"cpu": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {})},
               tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2, default=str))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    steps = sorted((p for p in directory.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]))
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: Path, params: dict[str, Any], optimizer: Any) -> dict[str, Any]:
    """Restore weights, optimiser and RNG in place; return the saved state dict."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    weights = load_file(path / "trainable.safetensors")
    if set(weights) != set(params):
        extra, missing = sorted(set(weights) - set(params)), sorted(set(params) - set(weights))
        raise RuntimeError(f"{path}: checkpoint does not match the model (extra {extra[:3]}, missing {missing[:3]})")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())
