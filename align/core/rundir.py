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
import os
import shutil
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from align.core.errors import AlignError

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
        if not self.checkpoints.is_dir():
            return None
        found = [p for p in self.checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
        return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)

    def prepare(self, *, overwrite: bool = False, resume: bool = False) -> None:
        """Refuse to clobber a finished run; clear it on `overwrite`; keep checkpoints on `resume`."""
        if overwrite and resume:
            raise AlignError("--overwrite and --resume contradict each other: pick one")
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
            raise AlignError(f"{self.path} holds an unfinished run ({state or 'unknown state'}); pass {hint}--overwrite")
        self.path.mkdir(parents=True, exist_ok=True)

    def write_config(self, config_yaml: str) -> None:
        write_text_atomic(self.file(CONFIG), config_yaml)

    def set_status(self, state: str, **extra: Any) -> None:
        body = {"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
        if state == "running":
            body.update(pid=os.getpid(), host=socket.gethostname())
        write_json_atomic(self.file(STATUS), body)

    @contextlib.contextmanager
    def running(self) -> Iterator[StageDir]:
        """Mark the stage running; `done` on success, `failed` with the error on any exception."""
        started = time.time()
        self.set_status("running")
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
        self.set_status("done", elapsed_s=round(time.time() - started, 2))


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
    return True
