"""align's processes run on tbbmalloc on a CPU machine (core.malloc): the re-exec, its opt-out, and what children get."""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from align.core import malloc

ROOT = Path(__file__).resolve().parents[2]
on_tbb = pytest.mark.skipif(malloc.libraries() is None or not malloc._applies(),
                            reason="the tbb wheel is a dependency on Linux x86-64 CPU machines only")

# the process re-executes itself, then reports what it runs on, what its children get, and a child's own malloc
PROBE = """
import os, subprocess, sys
from align.core import heap, malloc
malloc.reexec()
heap.release()  # hands tbbmalloc's kept blocks back when on it
child = subprocess.run([sys.executable, "-c", "from align.core import malloc; print(malloc.in_use())"],
                       capture_output=True, text=True, check=True).stdout.strip()
print(malloc.in_use(), repr(os.environ.get("LD_PRELOAD")), child, os.environ.get("ALIGN_MALLOC_USER_PRELOAD"))
"""


def clean_env(**env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", malloc.ENV, malloc._STARTED_WITH)}
    return {**base, "PYTHONPATH": str(ROOT), **env}


def probe(**env: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE], env=clean_env(**env), capture_output=True, text=True,
                          check=True, cwd=ROOT, timeout=120)
    return done.stdout.split()


@on_tbb
def test_the_process_re_executes_on_tbbmalloc_and_its_children_get_the_system_malloc():
    assert probe() == ["True", "None", "False", "None"]


@on_tbb
def test_the_preload_it_was_started_with_is_kept_behind_tbbmalloc_and_given_back_to_children():
    assert probe(LD_PRELOAD="libm.so.6") == ["True", "'libm.so.6'", "False", "None"]


@on_tbb
def test_align_malloc_system_keeps_the_system_malloc():
    assert probe(ALIGN_MALLOC="system") == ["False", "None", "False", "None"]


@on_tbb
def test_an_unknown_align_malloc_keeps_the_system_malloc_and_says_so():
    done = subprocess.run([sys.executable, "-c", PROBE], env=clean_env(ALIGN_MALLOC="jemalloc"), capture_output=True,
                          text=True, check=True, cwd=ROOT, timeout=120)
    assert done.stdout.split() == ["False", "None", "False", "None"]
    assert "ALIGN_MALLOC=jemalloc: expected tbbmalloc or system" in done.stderr


@on_tbb
def test_a_mark_inherited_from_another_process_is_dropped_not_trusted():
    # a parent's re-exec mark names the parent's pid: this process re-executes on its own and restores its own
    assert probe(ALIGN_MALLOC_USER_PRELOAD="1:libm.so.6") == ["True", "None", "False", "None"]


@on_tbb
def test_a_program_read_from_stdin_is_not_re_executed():
    done = subprocess.run([sys.executable, "-"], input=PROBE, env=clean_env(), capture_output=True, text=True,
                          check=True, cwd=ROOT, timeout=120)
    assert done.stdout.split() == ["False", "None", "False", "None"]


@on_tbb
def test_the_align_command_runs_on_tbbmalloc():
    out = subprocess.run([sys.executable, "-m", "align", "env"], env=clean_env(), capture_output=True, text=True,
                         check=True, cwd=ROOT, timeout=300).stdout
    assert "- malloc: tbbmalloc (ALIGN_MALLOC=(unset))" in out


@on_tbb
def test_preload_env_puts_tbbmalloc_first_and_once():
    env = malloc.preload_env({"LD_PRELOAD": "libm.so.6"})
    assert env["LD_PRELOAD"].split(":") == [*malloc.libraries(), "libm.so.6"]
    assert malloc.preload_env(env) == env  # already preloaded: as it is


def test_without_the_tbb_wheel_nothing_changes(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    assert malloc.libraries() is None
    env = {"PATH": "/bin", "LD_PRELOAD": "libm.so.6"}
    assert malloc.preload_env(env) == env
