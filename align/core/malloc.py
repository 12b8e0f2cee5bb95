"""The C allocator of an `align` process on a CPU machine: Intel's tbbmalloc in place of glibc's malloc, where
the `tbb` wheel is installed (a dependency on Linux x86-64).

A CPU training step allocates and frees gigabytes of large buffers: activations, their gradients, dequantised
4-bit weights. glibc serves them one of two ways, both costly. With its mmap threshold fixed at 1 MB
(core.heap.large_buffers_from_mmap, which the stages set) each buffer is a fresh mapping whose every 4 KB page
faults in zeroed: a quarter of a reward step's CPU time was in the kernel. With the threshold left dynamic they
come from the heap, whose holes between differently sized micro-batches nothing reuses: the same step without
the faults, at 1.4x the resident memory. tbbmalloc keeps freed large blocks by size and hands them out again.
SmolLM2-135M NF4 reward step, 8 HH-RLHF pairs at up to 512 tokens, one thread (2026-12-06): glibc 1 MB threshold
46.2-49.7 s (12.8-13.7 s of it system), peak 2589 MB; glibc dynamic 35.9-37.8 s, 3604 MB; tbbmalloc 35.9-40.9 s
(2.9-3.5 s system), 2543 MB.

The allocator is chosen before a process starts (LD_PRELOAD), so `align` re-executes itself once with tbbmalloc
preloaded (`reexec`, first thing in the CLI's entry point), and gives its children the LD_PRELOAD it was started
with. A script that imports align runs on whatever malloc it was started with; `preload_env` gives the
environment to start one with tbbmalloc. ALIGN_MALLOC=system keeps glibc's. Machines with an NVIDIA driver are
left as they are: there the large buffers are the GPU's, in torch's own caching allocator.

    libraries     the tbb wheel's tbbmalloc and its malloc-replacing proxy, or None
    in_use        whether this process runs on tbbmalloc
    preload_env   an environment that starts a process on tbbmalloc
    reexec        re-execute this process on tbbmalloc where that applies
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

ENV = "ALIGN_MALLOC"  # "system": glibc's malloc
_STARTED_WITH = "ALIGN_MALLOC_USER_PRELOAD"  # across the re-exec: "pid:the LD_PRELOAD the process was started with"
_LIBRARIES = ("libtbbmalloc.so.2", "libtbbmalloc_proxy.so.2")  # the proxy needs the first and has no RUNPATH


def libraries() -> list[str] | None:
    """Paths of the tbb wheel's libtbbmalloc and libtbbmalloc_proxy (the one replacing malloc, free and the
    rest), or None where the wheel is not installed or lacks them."""
    import importlib.metadata

    try:
        files = importlib.metadata.distribution("tbb").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = {Path(str(f)).name: f for f in files if Path(str(f)).name in _LIBRARIES}
    paths = [Path(found[name].locate()).resolve() for name in _LIBRARIES if name in found]
    # ld.so splits LD_PRELOAD at spaces as well as colons
    if len(paths) < len(_LIBRARIES) or not all(p.is_file() and not set(" :") & set(str(p)) for p in paths):
        return None
    return [str(p) for p in paths]


@functools.cache  # a process's malloc is fixed when it starts
def in_use() -> bool:
    """Whether this process runs on tbbmalloc (its proxy is mapped)."""
    try:
        return "libtbbmalloc_proxy" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def _applies() -> bool:
    """Linux, no NVIDIA driver, and ALIGN_MALLOC (this process's) unset or `tbbmalloc`; `system` or anything
    else keeps the system's malloc (anything else with a warning)."""
    choice = os.environ.get(ENV, "tbbmalloc")
    if choice.lower() not in ("tbbmalloc", "system"):
        print(f"align: {ENV}={choice}: expected tbbmalloc or system; running on the system's malloc", file=sys.stderr)
        return False
    return sys.platform == "linux" and choice.lower() == "tbbmalloc" and not Path("/dev/nvidiactl").exists()


def preload_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with tbbmalloc preloaded ahead of what it preloads, where that applies
    (judged by this process's environment) and the libraries are installed; else `env` as it is."""
    env = dict(os.environ if env is None else env)
    libs = libraries() if _applies() else None
    if libs is None or "libtbbmalloc_proxy" in env.get("LD_PRELOAD", ""):
        return env
    env["LD_PRELOAD"] = ":".join([*libs, *filter(None, [env.get("LD_PRELOAD", "")])])
    return env


def reexec() -> None:
    """Re-execute this process, as it was started (sys.orig_argv), on tbbmalloc, where that applies, the
    libraries are installed and it does not run on it yet; after the re-exec, restore the LD_PRELOAD it was
    started with, so its children (git, compilers, data workers) get the system's malloc. For a program's
    entry point, before anything is imported that threads or holds files: the process image is replaced."""
    mark = os.environ.pop(_STARTED_WITH, None)
    pid, _, before = (mark or "").partition(":")
    if pid == str(os.getpid()):  # this process, re-executed (execve keeps the pid); another's mark is dropped
        if before:
            os.environ["LD_PRELOAD"] = before
        else:
            os.environ.pop("LD_PRELOAD", None)
        return
    # a program read from stdin cannot be read again; a frozen one has no interpreter to restart
    if sys.orig_argv[1:2] == ["-"] or not sys.argv[0] or getattr(sys, "frozen", False) or in_use():
        return
    env = preload_env()
    if env.get("LD_PRELOAD") == os.environ.get("LD_PRELOAD"):
        return
    env[_STARTED_WITH] = f"{os.getpid()}:{os.environ.get('LD_PRELOAD', '')}"
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    try:  # the interpreter by its full path: a bare argv[0] would be looked up on PATH, outside a venv
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:  # not executable here: go on with the system's malloc
        return
