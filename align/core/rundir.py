"""The stage output directory contract (DESIGN.md): what a stage writes, and how.

    config.yaml    the fully resolved config
    metrics.json   final named figures, flat keys
    metrics.jsonl  one JSON object per logged step
    status.json    running / done / failed, with the error; pid and host while running
    checkpoints/   resumable state while running
    adapter/ or model/   the weights a later stage or a user loads
    .align         the marker: align made this directory, so `--overwrite` may empty it
    .lock          an OS lock held by the one process that writes here (pid and host inside)

Every file is written atomically (temp file + rename), so a killed run never leaves half a file.
A directory without the marker is never emptied: an `--out` or run name pointing at a user's own
files is refused, whatever the flags say.
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

from align.core.checkpoint import checkpoint_complete
from align.core.config import as_of_now, changed_settings, describe_changes
from align.core.dirlock import LOCK, DirLock, lock_holder
from align.core.errors import AlignError, Terminated, option

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
METRICS = "metrics.json"
METRICS_LOG = "metrics.jsonl"
STATUS = "status.json"
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
MODEL = "model"
MARKER = ".align"

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


def refuse_foreign(directory: Path) -> None:
    """Refuse a directory that holds files align did not write: nothing of a user's is ever emptied."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise AlignError(f"{directory}: is a file, not an output directory")
    # a directory of align's own directories (a run's, its stages made by `align sft --out`) is align's
    if directory.is_dir() and not (directory / MARKER).is_file() and any(
            not (p.is_dir() and (p / MARKER).is_file()) for p in _contents(directory)):
        raise AlignError(f"{directory} holds files that align did not write (there is no {MARKER} marker in it); "
                         f"align writes only into a new or empty directory, or one it made: choose another")


def mark(directory: Path, kind: str) -> None:
    """The marker that says align made `directory` (a stage's or a whole run's)."""
    if not (Path(directory) / MARKER).is_file():
        write_json_atomic(Path(directory) / MARKER, {"written_by": "align", "kind": kind, "created": _now()})


def _contents(directory: Path) -> list[Path]:
    return [p for p in Path(directory).iterdir() if p.name not in (MARKER, LOCK)]


@dataclass
class StageDir:
    """One stage's output directory."""

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)
        self._lock = DirLock(self.path, "an align stage")
        self.resumed_with_changes: dict[str, tuple[Any, Any]] = {}

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def status(self) -> dict[str, Any] | None:
        try:
            status = read_json(self.file(STATUS))
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return status if isinstance(status, dict) else None

    def state(self) -> str | None:
        """`done`, `failed`, `running`, or `dead` for a running status whose process is gone."""
        status = self.status()
        if status is None:
            return None
        if status.get("state") == "running" and not self._writer_alive(status):
            return "dead"
        return status.get("state")

    def _writer_alive(self, status: dict[str, Any]) -> bool:
        """Whether the process a `running` status names still holds the directory's lock."""
        if self._lock.fd is not None:  # ours: the status is this process's own, or a dead run's
            return status.get("pid") == os.getpid()
        return lock_holder(self.path) is not None

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

    def prepare(self, *, overwrite: bool = False, resume: bool = False, config_yaml: str | None = None,
                allow_changes: bool = False) -> None:
        """Take the directory for this process (its lock, held until `running()` ends or `release()`)
        and check it may be written: refuse to clobber a finished run; clear it on `overwrite`; keep
        checkpoints on `resume`, whose settings must be the checkpoint's (`config_yaml`) unless
        `allow_changes`, which records the changes in `resumed_with_changes` and metrics.jsonl."""
        self.check_options(overwrite=overwrite, resume=resume, allow_changes=allow_changes)
        existed = self.path.exists()
        self._lock.acquire()
        try:
            self._check(overwrite, resume, config_yaml, allow_changes)
            mark(self.path, "stage")
        except BaseException:
            self.release()
            if not existed:  # a refused command leaves nothing where its output would have gone
                shutil.rmtree(self.path, ignore_errors=True)
            raise

    def check_options(self, *, overwrite: bool = False, resume: bool = False, allow_changes: bool = False) -> None:
        """What `prepare` refuses without taking the lock: contradicting flags, a directory of the
        user's, a resume with nothing to resume. A stage calls it first, before seconds of loading."""
        if overwrite and resume:
            raise AlignError(f"{option('overwrite')} and {option('resume')} contradict each other: pick one")
        if allow_changes and not resume:
            raise AlignError(f"{option('allow-changes')} goes with {option('resume')}: it lets a resumed run take changed settings")
        refuse_foreign(self.path)
        if resume and self.newest_checkpoint() is None and self.state() not in ("done", "running"):
            raise AlignError(f"{self.path}: {option('resume')} given but there is no checkpoint to resume from")

    def _check(self, overwrite: bool, resume: bool, config_yaml: str | None, allow_changes: bool) -> None:
        self._refuse_live_run()
        state = self.state()
        checkpoint = self.newest_checkpoint()
        if overwrite:
            self.clear()
        elif state == "done" and not resume:
            raise AlignError(f"{self.path} already holds a finished run; pass {option('overwrite')} to replace it")
        elif resume and checkpoint is None and state != "done":
            raise AlignError(f"{self.path}: {option('resume')} given but there is no checkpoint to resume from")
        elif not resume and state in ("failed", "dead") and checkpoint is None:
            # nothing finished and nothing to resume: starting again loses nothing
            log.warning("%s: replacing a run that %s and left no checkpoint", self.path, self.describe_state())
            self.clear()
        elif not resume and _contents(self.path):
            hint = f"{option('resume')} to continue from its newest checkpoint, or " if checkpoint else ""
            raise AlignError(f"{self.path} holds an unfinished run ({self.describe_state()}); pass {hint}{option('overwrite')}")
        if resume and state != "done":
            self._check_resumed_settings(config_yaml, allow_changes, checkpoint)
            log.warning("%s: resuming from %s a run that %s", self.path, checkpoint.name, self.describe_state())
            self.remove_debris()

    def _refuse_live_run(self) -> None:
        """A stage directory of an `align run` belongs to that run while it lives: another command
        writing it would change what the run's later stages read."""
        run = self.path.parent
        holder = lock_holder(run) if (run / MARKER).is_file() else None
        if holder is not None and holder.get("pid") != os.getpid():
            raise AlignError(f"{self.path} belongs to the run {run}, in use by {holder.get('what') or 'align run'} "
                             f"(pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}); wait "
                             f"for it to finish or stop it, or write elsewhere")

    def _check_resumed_settings(self, config_yaml: str | None, allow_changes: bool, checkpoint: Path) -> None:
        """A resumed run continues the checkpoint's settings: a change is refused unless allowed,
        and the model's (whose weights the checkpoint holds) never."""
        changes = self.changed_settings(config_yaml) if config_yaml is not None else {}
        if not changes:
            return
        if not allow_changes:
            raise AlignError(f"{self.path}: {option('resume')} with settings that differ from the checkpoint's "
                             f"({describe_changes(changes)}); resume with the same settings, add {option('allow-changes')} "
                             f"to apply the new ones from {checkpoint.name} on, or start again with {option('overwrite')}")
        fixed = {k: v for k, v in changes.items() if k.startswith("model.")}
        if fixed:
            raise AlignError(f"{self.path}: {describe_changes(fixed)}: the model cannot change on resume, "
                             f"{checkpoint.name} holds weights for the old one; start again with {option('overwrite')}")
        self.resumed_with_changes = changes
        log.warning("%s: resuming with changed settings: %s", self.path,
                    ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
        with open(self.file(METRICS_LOG), "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": int(checkpoint.name.split("-")[-1]), "resumed_with_changes":
                                {k: {"before": a, "after": b} for k, (a, b) in changes.items()}}, default=str) + "\n")

    def changed_settings(self, config_yaml: str, config_class: type | None = None) -> dict[str, tuple[Any, Any]]:
        """The settings of `config_yaml` that differ from those this directory's run wrote (read in this
        release's terms when `config_class` is given: config.as_of_now)."""
        import yaml

        try:
            before = yaml.safe_load(self.file(CONFIG).read_text(encoding="utf-8"))
        except (FileNotFoundError, yaml.YAMLError):
            return {}
        if config_class is not None and isinstance(before, dict):
            before = as_of_now(config_class, before)
        return changed_settings(before, yaml.safe_load(config_yaml))

    def release(self) -> None:
        self._lock.release()

    def clear(self) -> None:
        """Remove what a run of align left here (the directory carries align's marker), keeping the lock."""
        for p in _contents(self.path):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()

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
                    log.warning("%s: removing %s, a checkpoint cut short or damaged", self.path, p.name)
                    shutil.rmtree(p, ignore_errors=True)

    def write_config(self, config_yaml: str) -> None:
        from align.core.environment import header

        write_text_atomic(self.file(CONFIG), header() + config_yaml)

    def set_status(self, state: str, **extra: Any) -> None:
        body = {"state": state, "time": _now(), **extra}
        if state == "running":
            body.update(pid=os.getpid(), host=socket.gethostname())
            if self.resumed_with_changes:
                body["resumed_with_changes"] = {k: {"before": a, "after": b}
                                                for k, (a, b) in self.resumed_with_changes.items()}
        write_json_atomic(self.file(STATUS), body)

    def _set_failed(self, **extra: Any) -> None:
        """Record a failure even on a full disk, where the atomic write's new file cannot be made:
        then status.json is rewritten in place, in the blocks it already has (without the traceback)."""
        try:
            self.set_status("failed", **extra)
        except OSError:
            body = json.dumps({"state": "failed", "time": _now(), "error": extra["error"][:1000]}).encode()
            try:
                with open(self.file(STATUS), "r+b") as f:
                    f.write(body)
                    f.truncate()
            except OSError as e:
                log.warning("%s: could not record the failure in %s: %s", self.path, STATUS, e)

    @contextlib.contextmanager
    def running(self) -> Iterator[StageDir]:
        """Mark the stage running; `done` on success, `failed` with the error on any exception; the
        directory's lock is let go at the end.

        SIGTERM (a scheduler's or `docker stop`'s way to end a job) becomes an exception here, so
        the status says `failed` instead of a `running` that outlives the process. SIGKILL cannot be
        caught: `state()` reads such a run as `dead`, its lock gone with its process."""
        started = time.time()
        previous = on_sigterm(raise_terminated)
        try:
            self.set_status("running")
            try:
                yield self
            except BaseException as e:
                kind = "interrupted" if isinstance(e, KeyboardInterrupt) else type(e).__name__
                self._set_failed(error=f"{kind}: {e}", elapsed_s=round(time.time() - started, 2),
                                 traceback=None if isinstance(e, (AlignError, Terminated, KeyboardInterrupt))
                                 else traceback.format_exc(limit=20))
                raise
            self.set_status("done", elapsed_s=round(time.time() - started, 2))
        finally:
            on_sigterm(previous)
            self.release()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def on_sigterm(handler: Any) -> Any:
    """Install a SIGTERM handler (main thread only: Python allows no other); returns the old one."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


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
