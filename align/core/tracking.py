"""Metrics files, W&B (offline unless the user logged in), and peak-memory figures.

Our own metrics.jsonl / metrics.json are written whatever W&B does, so results are files a
person can read and a later stage can parse.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from align.core import rundir
from align.core.config import check


@dataclass
class TrackingConfig:
    wandb: bool = True
    """Log to Weights & Biases. Offline (files under the stage dir, `wandb sync` later) unless
    WANDB_MODE says otherwise or the user is logged in (WANDB_API_KEY or ~/.netrc)."""
    project: str = "align"
    """W&B project."""
    group: str | None = None
    """W&B group; `align run` sets it to the run name so all stages of one run compare side by side."""
    run_name: str | None = None
    """W&B run name; defaults to the stage directory's name."""
    logging_steps: int = 5
    """Log training figures every this many optimiser steps (SFT, reward, DPO, GRPO, RLOO); PPO logs every
    update and the evaluation once, whatever this says."""

    def __post_init__(self):
        check(self.logging_steps > 0, "tracking.logging_steps", f"must be > 0, got {self.logging_steps}")


def wandb_mode() -> Literal["online", "offline", "disabled"]:
    """`wandb.init` with no key and no mode raises; default to offline unless the user logged in."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("online", "offline", "disabled"):
        return mode  # type: ignore[return-value]
    if mode == "dryrun":
        return "offline"
    if os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes"):
        return "disabled"
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


def configure_wandb_env(config: TrackingConfig, out_dir: Path, job_type: str) -> list[str]:
    """Set the environment that transformers' WandbCallback reads; returns `report_to`."""
    if not config.wandb or wandb_mode() == "disabled":
        return []
    os.environ["WANDB_MODE"] = wandb_mode()
    os.environ["WANDB_DIR"] = str(Path(out_dir).resolve())
    os.environ["WANDB_PROJECT"] = config.project
    os.environ["WANDB_JOB_TYPE"] = job_type
    os.environ.setdefault("WANDB_SILENT", "true")
    if config.group:
        os.environ["WANDB_RUN_GROUP"] = config.group
    else:
        os.environ.pop("WANDB_RUN_GROUP", None)
    # the key stays in the environment only; never copy it into configs or logs
    return ["wandb"]


class MetricsLog:
    """Appends step records to metrics.jsonl and keeps the final figures for metrics.json.

    With many processes only the main one writes (`write=False` elsewhere); the others keep the
    final figures in memory, so every process returns the same result."""

    def __init__(self, out_dir: Path, wandb_run: Any = None, write: bool = True):
        self.out_dir = Path(out_dir)
        self.final: dict[str, Any] = {}
        self.wandb_run = wandb_run
        self.write = write

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.write:
            return
        record = {"step": step, **{k: clean_number(v) for k, v in metrics.items()}}
        with open(self.out_dir / rundir.METRICS_LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step)

    def update(self, metrics: dict[str, Any]) -> None:
        self.final.update({k: clean_number(v) for k, v in metrics.items()})
        if not self.write:
            return
        rundir.write_json_atomic(self.out_dir / rundir.METRICS, self.final)
        if self.wandb_run is not None:
            self.wandb_run.summary.update({k: v for k, v in self.final.items() if isinstance(v, (int, float))})

    def truncate_after(self, step: int) -> None:
        """On resume, drop log lines past the checkpoint we restart from, so steps stay unique."""
        path = self.out_dir / rundir.METRICS_LOG
        if not self.write or not path.exists():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write
        rundir.write_text_atomic(path, "".join(line + "\n" for line in kept))


def clean_number(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def reset_peak_memory() -> None:
    """Start the peak-memory marks again from now, so that each stage of `align run` (one process)
    reports its own peak rather than the highest of every stage before it. Linux resets the
    kernel's peak RSS (VmHWM) through clear_refs; elsewhere the figure stays the process's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    torch = _torch_on_cuda()
    if torch is not None:
        torch.cuda.reset_peak_memory_stats()


def _torch_on_cuda() -> Any:
    """torch, if this process has imported it and used a GPU; else None (nothing to import here)."""
    torch = sys.modules.get("torch")
    return torch if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized() else None


def _peak_rss_mb() -> float:
    """VmHWM where Linux has it (reset_peak_memory resets it), else getrusage's lifetime peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20  # ru_maxrss: KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process (since reset_peak_memory), and peak CUDA memory when a GPU was used."""
    out = {"memory/peak_rss_mb": round(_peak_rss_mb(), 1)}
    torch = _torch_on_cuda()
    if torch is not None:
        out["memory/peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


# the end-of-training summary would otherwise collide with the per-step names
HF_SUMMARY_KEYS = {"train_loss": "train/loss_mean", "train_runtime": "train/runtime_s"}


def hf_key(key: str) -> str:
    """transformers' log keys -> ours: `eval_loss` -> `eval/loss`, `loss` -> `train/loss`."""
    if key in HF_SUMMARY_KEYS:
        return HF_SUMMARY_KEYS[key]
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_"):]
    if key.startswith("train_"):
        return "train/" + key[len("train_"):]
    return "train/" + key


def trainer_callback(metrics: MetricsLog) -> Any:
    """A transformers TrainerCallback that mirrors every log into metrics.jsonl."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                # not train()'s closing `train_loss`: it averages that call's steps alone, so after a resume
                # it is not the run's mean (metrics.json's train/loss_mean is, from resumable.mean_logged_loss)
                metrics.log(state.global_step, {hf_key(k): v for k, v in logs.items() if k != "train_loss"})

    return MetricsCallback()


def start_wandb(config: TrackingConfig, out_dir: Path, job_type: str, run_config: dict[str, Any]) -> Any:
    """A W&B run for our own training loops (TRL-based stages use `report_to`); None when off."""
    if not configure_wandb_env(config, out_dir, job_type):
        return None
    import wandb

    return wandb.init(project=config.project, group=config.group, job_type=job_type,
                      name=config.run_name or Path(out_dir).name, dir=str(out_dir), config=run_config,
                      mode=wandb_mode(), reinit="finish_previous")
