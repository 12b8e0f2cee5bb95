"""Small runs of SFT, the reward model and PPO on the tiny model, in-process or as `python -m align`,
and the checks the kill, determinism and safety tests share."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from tests.conftest import DEMO, ROOT

# timings, speeds and memory differ between identical runs; everything else must not
UNTIMED = re.compile(r"time|per_s|per_second|sec_per|memory/|^eps$|elapsed")


def stage_overrides(stage: str, model_dir: Path, data: Path) -> list[str]:
    """Settings for a run of a few seconds: logs every step, checkpoints every few, no dropout."""
    common = [f"model.name={model_dir}", "model.quantization=none", "model.lora.r=4", "model.lora.dropout=0",
              "tracking.wandb=false", "tracking.logging_steps=1"]
    if stage == "sft":
        return [*common, f"data.train={DEMO / 'sft.jsonl'}", "data.max_records=72", "data.eval_fraction=0.1",
                "training.batch_size=4", "training.max_steps=16", "training.save_steps=4", "training.max_length=48",
                "training.learning_rate=3e-3", "training.lr_scheduler=constant"]
    if stage == "reward":
        return [*common, f"data.train={data}", "data.eval_fraction=0.125", "data.max_length=64", "training.batch_size=4",
                "training.save_steps=3", "training.learning_rate=3e-3", "training.lr_scheduler=constant"]
    if stage == "ppo":
        return [*common, "reward.model=null", "reward.function=tests.ppo.toy_reward:digit_count",
                "reward.no_eos_penalty=null", f"data.prompts={DEMO / 'prompts.jsonl'}", "data.eval_prompts=null",
                "training.updates=12", "training.batch_size=8", "training.mini_batch_size=4", "training.ppo_epochs=2",
                "training.learning_rate=1e-3", "training.lr_scheduler=constant", "generation.max_new_tokens=8",
                "training.eval_steps=0", "training.sample_steps=1", "training.save_steps=3"]
    raise ValueError(stage)


STEPS = {"sft": 16, "reward": 14, "ppo": 12}  # reward: 56 training groups / batch 4
FIRST_CHECKPOINT = {"sft": 4, "reward": 3, "ppo": 3}


def preference_file(path: Path) -> Path:
    from tests.reward.test_train import separable_preferences

    path.write_text("".join(json.dumps(r) + "\n" for r in separable_preferences(64, seed=5)))
    return path


def config(stage: str, model_dir: Path, data: Path, out: Path, *extra: str) -> Any:
    from align.core.config import load_config

    cls = {"sft": "align.sft.config:SFTConfig", "reward": "align.reward.config:RewardConfig",
           "ppo": "align.ppo.config:PPOConfig"}[stage]
    module, name = cls.split(":")
    return load_config(getattr(__import__(module, fromlist=[name]), name), None,
                       [*stage_overrides(stage, model_dir, data), f"out_dir={out}", *extra])


def train_function(stage: str) -> Callable[..., dict[str, Any]]:
    if stage == "sft":
        from align.sft.train import train
    elif stage == "reward":
        from align.reward.train import train
    else:
        from align.ppo.train import train
    return train


def run_in_process(stage: str, model_dir: Path, data: Path, out: Path, *extra: str, **kwargs: Any) -> dict[str, Any]:
    with one_thread():
        return train_function(stage)(config(stage, model_dir, data, out, *extra), **kwargs)


def argv(stage: str, model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    sets = [a for item in (*stage_overrides(stage, model_dir, data), *extra) for a in ("--set", item)]
    return [sys.executable, "-m", "align", stage, *sets, "--out", str(out)]


def environment(**extra: str) -> dict[str, str]:
    # one thread: on a shared 2-core machine, two spinning OpenMP threads per process made a tiny
    # run 50x slower (16 SFT steps: 84 s against 0.9 s); the figures are the same
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """In-process runs as the subprocesses run them (see environment())."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def launch(command: list[str], log: Path, **env: str) -> subprocess.Popen:
    """A stage as its own process, run from the repository (the toy reward imports from tests/)."""
    return subprocess.Popen(command, cwd=ROOT, env=environment(**env), stdout=open(log, "w"), stderr=subprocess.STDOUT)


def logs(out: Path) -> list[dict[str, Any]]:
    """metrics.jsonl, every line of which must parse."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def step_records(out: Path) -> list[dict[str, Any]]:
    """The per-step training records (not eval or end-of-run summaries)."""
    keys = ("train/loss", "objective/scores")
    return [r for r in logs(out) if any(k in r for k in keys)]


def newest_logged_step(out: Path) -> int:
    """The last step in metrics.jsonl; a line the writer is halfway through does not count."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in lines:
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass
    return max(steps)


def wait_until(condition: Callable[[], bool], process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (exit {process.returncode}) before the kill point:\n"
                                 f"{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no kill point within {timeout}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)


def kill_at(process: subprocess.Popen, out: Path, log: Path, step: int, sig: int = signal.SIGKILL) -> None:
    """Kill once metrics.jsonl shows `step`, wherever the process is inside the step after it."""
    wait_until(lambda: newest_logged_step(out) >= step, process, log)
    process.send_signal(sig)
    process.wait(timeout=60)


def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not UNTIMED.search(k)} for r in records]


def check_files_intact(out: Path) -> list[str]:
    """Every file in a stage directory parses; no temp file or half checkpoint is left. Returns the
    files checked."""
    import torch
    from safetensors.torch import load_file

    from align.core.rundir import checkpoint_complete

    checked = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out)
        assert not path.name.endswith(".tmp") and not any(part.startswith(".tmp-") for part in rel.parts), rel
        if "wandb" in rel.parts:
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            [json.loads(line) for line in path.read_text().splitlines()]
        elif path.suffix == ".safetensors":
            assert all(torch.is_tensor(t) for t in load_file(path).values()), rel
        elif path.suffix in (".yaml", ".yml"):
            yaml.safe_load(path.read_text())
        elif path.suffix in (".pt", ".pth", ".bin"):
            assert zipfile.ZipFile(path).testzip() is None, rel  # torch.save writes a zip: a cut one fails its CRC
        else:
            continue
        checked.append(str(rel))
    for checkpoint in (out / "checkpoints").glob("checkpoint-*"):
        assert checkpoint_complete(checkpoint), checkpoint
    return checked
