"""What every benchmark shares: the machine record, child processes measured one by one, medians,
and the results file. Imports only the standard library, so the peer's venv can load it too."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PEER_PYTHON = ROOT / ".venv-trl112" / "bin" / "python"


def machine() -> dict[str, Any]:
    """Where and when: results from a shared, noisy machine mean little without this."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0) if Path("/proc/meminfo").exists() else 0
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gb": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
    }


def versions(*names: str) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def run_child(argv: list[str], timeout: float = 900, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one measured child; its last stdout line that is JSON is its result.

    `peak_rss_mb` is the child's high-water mark as the kernel reports it to the parent (wait4's
    rusage, i.e. getrusage's ru_maxrss of that child alone), so each run is measured in a process
    of its own and nothing from the parent or an earlier run counts.
    """
    import tempfile
    import threading

    child_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled",
                 "PYTHONPATH": str(ROOT), **(env or {})}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        # files, not pipes: wait4 must reap the child itself to get its rusage, so nothing else may wait on it
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True, env=child_env, cwd=ROOT)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed with code {proc.returncode}\n{stderr[-4000:]}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(map(str, argv))} printed no JSON result\n{stdout[-2000:]}\n{stderr[-2000:]}")
    result = json.loads(lines[-1])
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # KiB on Linux
    result["process_wall_s"] = round(wall, 2)
    return result


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (ru_maxrss is KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    """Make the peak-RSS mark start again from now (align's per-stage reset), so a child measures
    the peak of one phase (training) apart from loading's transient peak."""
    from align.core import tracking

    tracking.reset_peak_memory()


def hwm_mb() -> float:
    """The peak RSS since the last reset_peak_rss."""
    from align.core import tracking

    return tracking.peak_memory_mb()["memory/peak_rss_mb"]


def report(result: dict[str, Any]) -> None:
    """A child's last act: its result as one JSON line on stdout, with the malloc it ran on (the parent adds
    its peak RSS)."""
    maps = Path("/proc/self/maps")  # as core.malloc.in_use reads it: bench.trl_peer imports nothing of align
    on_tbb = maps.exists() and "libtbbmalloc_proxy" in maps.read_text()
    print(json.dumps({**result, "malloc": "tbbmalloc" if on_tbb else "system"}), flush=True)


def as_align_runs(env: dict[str, str]) -> dict[str, str]:
    """A child's environment for running align as its command does: on tbbmalloc where `align` re-executes
    itself on it (core.malloc)."""
    from align.core import malloc

    return malloc.preload_env(env)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def median_of(runs: list[dict[str, Any]], keys: list[str]) -> dict[str, float]:
    """Per key, the median over runs (each run's own figure), rounded for reading."""
    return {k: round(median([r[k] for r in runs if r.get(k) is not None]), 4) for k in keys}


def save(name: str, body: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    body = {"benchmark": name, "machine": {**body.pop("machine", machine()),
                                           "load_average_at_end": list(os.getloadavg())}, **body}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


def emit(line: dict[str, Any]) -> None:
    """The one JSON line per workload the benchmark prints."""
    print(json.dumps(line), flush=True)


def python_main() -> str:
    return sys.executable
