"""The stage output directory contract (DESIGN.md): what a stage writes, and how.

    config.yaml    the fully resolved config
    metrics.json   final named figures, flat keys
    metrics.jsonl  one JSON object per logged step
    status.json    running / done / failed, with the error; pid and host while running
    checkpoints/   resumable state while running
    adapter/ or model/   the weights a later stage or a user loads

Every file is written atomically (temp file + rename), so a killed run never leaves half a file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from align.core.errors import AlignError, Terminated

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
METRICS = "metrics.json"
METRICS_LOG = "metrics.jsonl"
STATUS = "status.json"
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
MODEL = "model"

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for people to read
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def replace_dir(target: Path) -> Iterator[Path]:
    """Write a directory whole or not at all: into a temp sibling that replaces `target` at the end.

    Weights, tokenizer and records are saved by libraries file by file; a kill halfway would leave
    a directory that loads as something else, or not at all."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}."))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
        if target.exists():
            old = target.with_name(f".old-{target.name}.{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@dataclass
class StageDir:
    """One stage's output directory."""

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def status(self) -> dict[str, Any] | None:
        try:
            return read_json(self.file(STATUS))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def state(self) -> str | None:
        """`done`, `failed`, `running`, or `dead` for a running status whose process is gone."""
        status = self.status()
        if status is None:
            return None
        if status.get("state") == "running" and not _process_alive(status):
            return "dead"
        return status.get("state")

    def metrics(self) -> dict[str, Any]:
        """The figures a previous run of this stage wrote (empty when none): kept across a resume."""
        try:
            return read_json(self.file(METRICS))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def newest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint: one a kill cut short is passed over."""
        if not self.checkpoints.is_dir():
            return None
        found = [p for p in self.checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
                 and checkpoint_complete(p)]
        return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)

    def prepare(self, *, overwrite: bool = False, resume: bool = False) -> None:
        """Refuse to clobber a finished run; clear it on `overwrite`; keep checkpoints on `resume`."""
        if overwrite and resume:
            raise AlignError("--overwrite and --resume contradict each other: pick one")
        if self.path.exists() and not self.path.is_dir():
            raise AlignError(f"{self.path}: is a file, not an output directory")
        state = self.state()
        if overwrite:
            if self.path.exists():
                shutil.rmtree(self.path)
        elif state == "done" and not resume:
            raise AlignError(f"{self.path} already holds a finished run; pass --overwrite to replace it")
        elif state == "running":
            raise AlignError(f"{self.path} is in use by a running process ({self.status().get('pid')})")
        elif resume and self.newest_checkpoint() is None and state != "done":
            raise AlignError(f"{self.path}: --resume given but there is no checkpoint to resume from")
        elif not resume and self.path.exists() and any(self.path.iterdir()):
            hint = "--resume to continue from its newest checkpoint, or " if self.newest_checkpoint() else ""
            raise AlignError(f"{self.path} holds an unfinished run ({self.describe_state()}); pass {hint}--overwrite")
        if resume and state != "done":
            log.warning("%s: resuming from %s a run that %s", self.path, self.newest_checkpoint().name,
                        self.describe_state())
            self.remove_debris()
        self.path.mkdir(parents=True, exist_ok=True)

    def describe_state(self) -> str:
        """The state in words, naming the process of a run that died without saying so."""
        state, status = self.state(), self.status() or {}
        if state == "dead":
            return (f"died without finishing: its process {status.get('pid')} on {status.get('host')} is gone "
                    f"(killed, or out of memory) while status.json still said running")
        if state == "failed":
            return f"failed: {status.get('error', 'no error recorded')}"
        return f"is {state}" if state else "left no status"

    def remove_debris(self) -> None:
        """What a killed run leaves: temp files and directories of atomic writes, checkpoints cut short."""
        for tmp in [p for p in self.path.rglob(".*.tmp") if p.is_file()]:
            tmp.unlink(missing_ok=True)
        for tmp in [p for p in self.path.iterdir() if p.is_dir() and p.name.startswith((".tmp-", ".old-"))]:
            shutil.rmtree(tmp, ignore_errors=True)
        if self.checkpoints.is_dir():
            for p in self.checkpoints.iterdir():
                if p.is_dir() and (p.name.startswith(".tmp-") or (p.name.startswith("checkpoint-")
                                                                  and not checkpoint_complete(p))):
                    log.warning("%s: removing %s, a checkpoint cut short", self.path, p.name)
                    shutil.rmtree(p, ignore_errors=True)

    def write_config(self, config_yaml: str) -> None:
        write_text_atomic(self.file(CONFIG), config_yaml)

    def set_status(self, state: str, **extra: Any) -> None:
        body = {"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
        if state == "running":
            body.update(pid=os.getpid(), host=socket.gethostname(), pid_start=_process_start(os.getpid()))
        write_json_atomic(self.file(STATUS), body)

    @contextlib.contextmanager
    def running(self) -> Iterator[StageDir]:
        """Mark the stage running; `done` on success, `failed` with the error on any exception.

        SIGTERM (a scheduler's or `docker stop`'s way to end a job) becomes an exception here, so
        the status says `failed` instead of a `running` that outlives the process. SIGKILL cannot be
        caught: `state()` reads such a run as `dead` from its pid."""
        started = time.time()
        self.set_status("running")
        previous = _on_sigterm(_raise_terminated)
        try:
            yield self
        except BaseException as e:
            kind = "interrupted" if isinstance(e, KeyboardInterrupt) else type(e).__name__
            self.set_status(
                "failed",
                error=f"{kind}: {e}",
                traceback=None if isinstance(e, AlignError) else traceback.format_exc(limit=20),
                elapsed_s=round(time.time() - started, 2),
            )
            raise
        finally:
            _on_sigterm(previous)
        self.set_status("done", elapsed_s=round(time.time() - started, 2))


def checkpoint_complete(path: Path) -> bool:
    """Whether a checkpoint directory was written to the end.

    Ours (`state.json`) and the evaluation's are renamed into place whole. transformers' Trainer
    writes its files in place, `trainer_state.json` last, so a kill can leave weights without it."""
    if not path.is_dir():
        return False
    if (path / "trainer_state.json").exists():
        try:
            read_json(path / "trainer_state.json")
            return True
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return False
    if (path / "state.json").exists():
        return True
    hf_files = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "adapter_model.safetensors",
                "model.safetensors", "adapter_config.json", "config.json")
    if any((path / name).exists() for name in hf_files):
        return False
    return any(path.iterdir())


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def _on_sigterm(handler: Any) -> Any:
    """Install a SIGTERM handler (main thread only: Python allows no other); returns the old one."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _process_start(pid: int) -> int | None:
    """The kernel's start time of a process (Linux), so a recycled pid is not taken for the run."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime, in clock ticks since boot
    except (OSError, ValueError, IndexError):
        return None


def _process_alive(status: dict[str, Any]) -> bool:
    if status.get("host") != socket.gethostname():
        return True  # cannot tell from here; trust the file
    pid = status.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    recorded = status.get("pid_start")
    if recorded is not None and _process_start(pid) not in (None, recorded):
        return False  # the pid now belongs to another process
    return True


def truncate_jsonl(path: Path, key: str, last: int) -> None:
    """Keep the records of a JSON Lines log whose `key` is at most `last`, and drop a line a kill
    cut in half: a resumed run logs the later ones again, each once."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get(key, 0) <= last:
                kept.append(line)
        except (json.JSONDecodeError, AttributeError, TypeError):
            continue
    write_text_atomic(path, "".join(line + "\n" for line in kept))
