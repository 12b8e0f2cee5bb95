"""The wheel: what `pip install align` gives a user, away from the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def listed_packages() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_every_package_folder_is_in_the_wheel_list():
    """pyproject.toml lists the packages by hand (reward/ and sft/ install under align): a new folder of code
    or presets must be added there, or the wheel silently lacks it."""
    mapped = {"reward": "align.reward", "sft": "align.sft", "configs": "align.presets.configs",
              "data": "align.presets.data"}
    on_disk = set()
    for top in ("align", "reward", "sft"):
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT).parts
            on_disk.add(".".join([mapped.get(parts[0], parts[0]), *parts[1:]]))
    for top in ("configs", "data"):
        on_disk |= {f"{mapped[top]}.{d.name}" for d in (ROOT / top).iterdir() if d.is_dir()}
    assert listed_packages() == on_disk


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel, built from this checkout and installed into a new venv. The venv borrows the test venv's
    libraries (torch and the rest) through a .pth line, which adds their folder but runs none of its .pth
    files: the checkout's editable install of align is not on the new venv's path."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp / "dist"), str(ROOT)], check=True, capture_output=True, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("align-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True)
    site = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def run_in(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRANSFORMERS_VERBOSITY")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", ALIGN_CACHE=str(cwd / "cache"))
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_the_wheel_ships_its_presets_and_runs_the_tiny_pipeline_from_an_empty_directory(installed, tmp_path):
    python, align = str(installed / "bin" / "python"), str(installed / "bin" / "align")
    where = run_in(installed, tmp_path, python, "-c",
                   "import align, align.reward.score, align.sft.train; print(align.__file__)\n"
                   "import importlib.util; print(importlib.util.find_spec('reward'), importlib.util.find_spec('sft'))")
    assert where.returncode == 0, where.stderr
    location, top_level = where.stdout.splitlines()
    assert location.startswith(str(installed)), location  # not the checkout's
    assert top_level == "None None"  # reward and sft are align.reward and align.sft, not top-level names

    listed = run_in(installed, tmp_path, align, "configs", "list")
    assert listed.returncode == 0, listed.stderr
    assert "pipeline/tiny" in listed.stdout and "sft/smollm2-qlora" in listed.stdout
    assert str(installed) in listed.stdout  # the presets are the wheel's

    copied = run_in(installed, tmp_path, align, "configs", "copy", "sft/smollm2-demo", "mine.yaml")
    assert copied.returncode == 0, copied.stderr
    demo_data = Path((tmp_path / "mine.yaml").read_text().split("train: ")[1].split()[0])
    assert demo_data.is_file() and str(demo_data).startswith(str(installed))

    ran = run_in(installed, tmp_path, align, "run", "--config", "tiny", "--set", "ppo.training.updates=2",
                 "--set", "eval.eval_size=4")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    manifest = json.loads((tmp_path / "runs" / "tiny" / "manifest.json").read_text())
    assert {s: e["status"] for s, e in manifest["stages"].items()} == dict.fromkeys(["sft", "reward", "ppo", "eval"], "done")
    assert (tmp_path / "runs" / "tiny" / "eval" / "report.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "mine.yaml", "runs"]
