"""Resumable training state for our own loops (reward model, PPO).

    checkpoint-N/trainable.safetensors   the trainable weights only (adapters, heads)
    checkpoint-N/optimizer.pt            optimiser state (tensors only: loaded with weights_only=True)
    checkpoint-N/rng.pt                  torch RNG state
    checkpoint-N/state.json              step counters, scheduler and anything else JSON-able

Written to a temp dir and renamed, so a kill never leaves half a checkpoint. `checkpoint_complete`
tells a whole checkpoint (ours or transformers') from one a kill or a full disk cut short.
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


def first_nonfinite(params: dict[str, Any]) -> str | None:
    """The name of the first parameter holding a NaN or an infinity, or None."""
    import torch

    return next((name for name, p in params.items() if not torch.isfinite(p.detach()).all()), None)


def newest_saved(directory: Path) -> Path | None:
    steps = [p for p in Path(directory).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(steps, key=lambda p: int(p.name.split("-")[-1]), default=None)


def resume_point(directory: Path) -> str:
    """Where `--resume` goes on from, in words, for a run stopped before it saved its current state."""
    newest = newest_saved(directory)
    if newest is None:
        return "no checkpoint was saved before it: start again with --overwrite"
    return f"`--resume` continues from {newest}, the newest checkpoint"


def refuse_nonfinite(params: dict[str, Any], directory: Path, step: int) -> None:
    """Stop before non-finite weights become a checkpoint that --resume would start from."""
    from align.core.errors import TrainingHalted

    bad = first_nonfinite(params)
    if bad is None:
        return
    where = resume_point(directory)
    raise TrainingHalted(f"the weights are not finite after step {step} ({bad}), so that state was not saved; "
                         f"{where}. Lower the learning rate")


def save_checkpoint(directory: Path, params: dict[str, Any], optimizer: Any, state: dict[str, Any], keep: int = 2,
                    name: str | None = None, require_finite: bool = True) -> Path:
    """`require_finite`: refuse (TrainingHalted) weights with a NaN or infinity, as resume points must not
    hold them; off only for a checkpoint kept for inspection under a name resume does not pick."""
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    if require_finite:
        refuse_nonfinite(params, directory, state["step"])
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


def state_of(path: Path) -> dict[str, Any]:
    """A checkpoint's saved state (counters, scheduler), without loading its weights."""
    return json.loads((Path(path) / "state.json").read_text())


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
    return state_of(path)


def apply_settings(optimizer: Any, scheduler: Any, learning_rate: float, weight_decay: float,
                   decay_groups: int | None = None) -> None:
    """Put the config's learning rate and weight decay into a restored optimiser and scheduler.

    Their saved state carries the rates of the run that wrote the checkpoint, so without this a run
    resumed with `--allow-changes` would record a new rate and train with the old one. With the same
    settings nothing changes. `decay_groups`: how many leading parameter groups decay (transformers
    puts the decaying parameters first and biases and norms, at 0, after); all when None."""
    import warnings

    for i, group in enumerate(optimizer.param_groups):
        group["initial_lr"] = learning_rate
        if decay_groups is None or i < decay_groups:
            group["weight_decay"] = weight_decay
    scheduler.base_lrs = [learning_rate] * len(optimizer.param_groups)
    with warnings.catch_warnings():  # get_lr outside step() warns; here it is the closed form we want
        warnings.simplefilter("ignore")
        rates = scheduler.get_lr()
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = list(rates)


def resumed_settings_callback(learning_rate: float, weight_decay: float) -> Any:
    """A TrainerCallback doing `apply_settings` once transformers has restored a checkpoint's
    optimiser and scheduler (it restores them before `on_train_begin`)."""
    from transformers import TrainerCallback

    class ResumedSettings(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
            if state.global_step > 0 and optimizer is not None and lr_scheduler is not None:
                apply_settings(optimizer, lr_scheduler, learning_rate, weight_decay, decay_groups=1)

    return ResumedSettings()


def checkpoint_complete(path: Path) -> bool:
    """Whether a checkpoint directory was written to the end and its files are whole.

    Ours (`state.json`) and the evaluation's are renamed into place whole. transformers' Trainer
    writes its files in place, `trainer_state.json` last, so a kill can leave weights without it.
    Either can hold a file a full disk cut short (0 bytes): such a checkpoint is passed over, and
    resume falls back to the one before it."""
    if not path.is_dir():
        return False
    for marker in ("trainer_state.json", "state.json"):
        if (path / marker).exists():
            try:
                json.loads((path / marker).read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError, OSError):
                return False
            return all(_file_whole(f) for f in path.iterdir() if f.is_file())
    hf_files = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "adapter_model.safetensors",
                "model.safetensors", "adapter_config.json", "config.json")
    if any((path / name).exists() for name in hf_files):
        return False
    return any(path.iterdir())


def _file_whole(path: Path) -> bool:
    """A safetensors file whose header and data are all there; a torch file whose zip archive ends
    where it should. Other files are taken as they are."""
    try:
        if path.suffix == ".safetensors":
            size = path.stat().st_size
            with open(path, "rb") as f:
                length = int.from_bytes(f.read(8), "little")
                if size < 8 or not 0 < length <= size - 8:
                    return False
                header = json.loads(f.read(length))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            return 8 + length + end <= size
        if path.suffix in (".pt", ".pth", ".bin"):
            import zipfile

            return zipfile.is_zipfile(path)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return False
    return True
