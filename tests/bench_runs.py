"""Running a benchmark as `make bench` does, for the tests that keep its code path from rotting."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_bench(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m bench.<module> ARGS` from the repository root, offline, one thread; it must exit 0."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", f"bench.{module}", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
