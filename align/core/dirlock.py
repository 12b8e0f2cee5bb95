"""One writer per directory: an exclusive OS lock (flock) on DIR/.lock, and who holds it.

The kernel drops the lock when its process ends, however it ends: a SIGKILL or an out-of-memory kill
leaves no stale lock, and unlike a pid in a file it does not depend on the host's name or on pids
surviving a container restart. The file holds the holder's pid, host and what it is, for messages.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from align.core.errors import AlignError

LOCK = ".lock"

_UMASK = os.umask(0)
os.umask(_UMASK)


class DirLock:
    """An exclusive OS lock (flock) on DIR/.lock, held by the one process that writes DIR."""

    def __init__(self, directory: Path, what: str):
        self.directory, self.what = Path(directory), what
        self.fd: int | None = None

    def acquire(self) -> None:
        if self.fd is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = lock_holder(self.directory) or {}
            raise AlignError(f"{self.directory} is in use by {holder.get('what') or 'another align process'} "
                             f"(pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}); wait "
                             f"for it to finish or stop it, or write elsewhere") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                 "what": self.what}).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None


def lock_holder(directory: Path) -> dict[str, Any] | None:
    """Who holds DIR's lock ({pid, host, since, what}), or None when no process does."""
    try:
        fd = os.open(Path(directory) / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            try:
                found = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:  # caught between the holder's truncate and write
                found = {}
            return found if isinstance(found, dict) and found else {"pid": None, "host": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
