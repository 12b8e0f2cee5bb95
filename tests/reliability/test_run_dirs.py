"""Run and stage directories: names that stay inside RUNS_DIR, nothing of a user's ever emptied,
one writer per directory (an OS lock the kernel drops on death), and resumes that either continue
the checkpoint's settings or apply and record the new ones."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from click.testing import CliRunner

from align.cli import cli
from align.core.errors import AlignError, ConfigError
from align.core.rundir import LOCK, MARKER, StageDir, write_json_atomic
from align.pipeline import Pipeline, load_config
from tests.conftest import ROOT
from tests.reliability import stages

TINY = ROOT / "configs" / "pipeline" / "tiny.yaml"
HOST = socket.gethostname()

HOLD_STAGE = """
import sys, time
from align.core.rundir import StageDir
out = StageDir(sys.argv[1])
out.prepare()
with out.running():
    (out.path / "weights.bin").write_text("live")
    print("ready", flush=True)
    time.sleep(120)
"""

HOLD_RUN = """
import sys, time
from align.pipeline import Pipeline, load_config
with Pipeline(load_config(None, [f"runs_dir={sys.argv[1]}", "name=x"])).claimed():
    print("ready", flush=True)
    time.sleep(120)
"""


@contextlib.contextmanager
def holder(code: str, path: Path) -> Iterator[subprocess.Popen]:
    """Another process that holds a directory until killed."""
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def at(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", ["..", ".", "", "  ", "a/b", "/abs"])
def test_a_run_name_is_one_plain_directory_name(at, name):
    (at / "sft").mkdir()
    (at / "sft" / "train.py").write_text("the user's source")
    result = CliRunner().invoke(cli, ["run", "--config", str(TINY), "--name", name, "--set", "runs_dir=."])
    assert result.exit_code == 2, result.output
    assert "must be a plain directory name" in result.output and "Traceback" not in result.output
    assert (at / "sft" / "train.py").read_text() == "the user's source"
    assert sorted(p.name for p in at.iterdir()) == ["sft"]


def test_a_run_name_from_the_config_file_is_checked_too(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: ..\nstages: [sft]\n")
    with pytest.raises(ConfigError, match=r"name: '\.\.' must be a plain directory name"):
        load_config(path)


def test_overwrite_never_empties_a_directory_align_did_not_make(tmp_path):
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for flags in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(AlignError, match=r"holds files that align did not write \(there is no \.align marker"):
            StageDir(mine).prepare(**flags)
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


def test_a_pipeline_refuses_a_run_directory_holding_the_users_files(at):
    (at / "runs" / "x" / "sft").mkdir(parents=True)
    (at / "runs" / "x" / "sft" / "notes.txt").write_text("keep")
    os.chdir(ROOT)
    result = CliRunner().invoke(cli, ["run", "--config", str(TINY), "--name", "x", "--set", f"runs_dir={at / 'runs'}"])
    assert result.exit_code == 2 and "holds files that align did not write" in result.output, result.output
    assert sorted(str(p.relative_to(at / "runs")) for p in (at / "runs").rglob("*")) == ["x", "x/sft", "x/sft/notes.txt"]


def test_overwrite_empties_a_directory_align_made_and_keeps_its_lock(tmp_path):
    out = StageDir(tmp_path / "s")
    out.prepare()
    with out.running():
        (out.checkpoints / "checkpoint-1").mkdir(parents=True)
        (out.path / "adapter").symlink_to(tmp_path)  # a link is removed, never followed
    (tmp_path / "kept.txt").write_text("outside the stage dir")
    StageDir(tmp_path / "s").prepare(overwrite=True)
    assert sorted(p.name for p in out.path.iterdir()) == sorted([LOCK, MARKER])
    assert (tmp_path / "kept.txt").exists()


def test_a_second_writer_is_refused_naming_the_holder_and_overwrite_spares_a_live_run(tmp_path):
    path = tmp_path / "s"
    with holder(HOLD_STAGE, path) as proc:
        assert StageDir(path).state() == "running"
        for flags in ({}, {"overwrite": True}, {"resume": True}):
            with pytest.raises(AlignError, match=rf"{path} is in use by an align stage \(pid {proc.pid} on {HOST}"):
                StageDir(path).prepare(**flags)
        assert (path / "weights.bin").read_text() == "live" and StageDir(path).status()["state"] == "running"
    # SIGKILL: the kernel let go of the lock with the process
    dead = StageDir(path)
    assert dead.state() == "dead" and f"its process {proc.pid} on {HOST} is gone" in dead.describe_state()
    dead.prepare(overwrite=True)
    assert not (path / "weights.bin").exists()


def test_liveness_is_the_lock_not_the_host_name(tmp_path):
    """A container restart changes the host name and recycles pids: a status file cannot tell."""
    path = tmp_path / "s"
    with holder(HOLD_STAGE, path):
        status = StageDir(path).status()
        write_json_atomic(path / "status.json", {**status, "host": "another-host"})
        assert StageDir(path).state() == "running"
    write_json_atomic(path / "status.json", {**status, "host": "another-host", "pid": 1})  # pid 1 is alive
    assert StageDir(path).state() == "dead"
    StageDir(path).prepare(overwrite=True)


def test_two_runs_of_one_name_cannot_both_proceed(at):
    runs = at / "runs"
    with holder(HOLD_RUN, runs) as proc:
        os.chdir(ROOT)
        result = CliRunner().invoke(cli, ["run", "--config", str(TINY), "--name", "x", "--set", f"runs_dir={runs}"])
        assert result.exit_code == 2, result.output
        assert f"{runs / 'x'} is in use by align run --name x (pid {proc.pid} on {HOST}" in result.output
        # nor can a stage command write one of its stage directories, finished or not
        (runs / "x" / "sft").mkdir()
        for flags in ({}, {"overwrite": True}):
            with pytest.raises(AlignError, match=rf"{runs / 'x' / 'sft'} belongs to the run {runs / 'x'}, in use by "
                                                 rf"align run --name x \(pid {proc.pid} on {HOST}"):
                StageDir(runs / "x" / "sft").prepare(**flags)
    assert sorted(p.name for p in (runs / "x").iterdir()) == sorted([LOCK, MARKER, "sft"])
    StageDir(runs / "x" / "sft").prepare()  # the run is over: the directory is free


def test_sigterm_between_two_stages_is_recorded_as_failed(tmp_path):
    """The stop lands after the manifest says `running` and before the stage installs its handler."""
    code = f"""
import dataclasses, os, signal, time
import align.pipeline as pipeline
from align.pipeline import Pipeline, load_config

def train(config, **kw):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)

pipeline.STAGES["sft"] = dataclasses.replace(pipeline.STAGES["sft"], entry="__main__:train")
Pipeline(load_config({str(TINY)!r}, ["runs_dir={tmp_path}", "stages=[sft]"])).run()
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Terminated" in proc.stderr
    manifest = json.loads((tmp_path / "tiny" / "manifest.json").read_text())
    assert manifest["stages"]["sft"]["status"] == "failed"
    assert manifest["stages"]["sft"]["error"] == "Terminated: stopped by SIGTERM"


def fake_death(out: Path) -> None:
    """What a SIGKILL after the newest checkpoint leaves: a running status, no final weights, no lock holder."""
    import shutil

    status = json.loads((out / "status.json").read_text())
    write_json_atomic(out / "status.json", {**status, "state": "running", "pid": 2**22 + 7, "host": HOST})
    shutil.rmtree(out / "adapter")


def logged(out: Path, key: str) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


def test_a_resume_refuses_changed_settings_and_allow_changes_applies_and_records_them(tiny_model_dir, tmp_path):
    data = stages.preference_file(tmp_path / "prefs.jsonl")
    out = tmp_path / "reward"
    stages.run_in_process("reward", tiny_model_dir, data, out)
    fake_death(out)
    newest = StageDir(out).newest_checkpoint().name
    assert newest == "checkpoint-12"

    with pytest.raises(AlignError, match=r"--resume \(resume=True\) with settings that differ from the checkpoint's "
                                         r"\(training.learning_rate: 0.003 then, 0.001 now\); .*--allow-changes"):
        stages.run_in_process("reward", tiny_model_dir, data, out, "training.learning_rate=1e-3", resume=True)
    with pytest.raises(AlignError, match=r"model.lora.r: 4 then, 8 now: the model cannot change on resume"):
        stages.run_in_process("reward", tiny_model_dir, data, out, "model.lora.r=8", resume=True, allow_changes=True)

    stages.run_in_process("reward", tiny_model_dir, data, out, "training.learning_rate=1e-3", resume=True,
                          allow_changes=True)
    # applied for real: the restored optimiser trains the steps after the checkpoint at the new rate
    assert logged(out, "train/learning_rate") == {**{s: 3e-3 for s in range(1, 13)}, 13: 1e-3, 14: 1e-3}
    assert yaml.safe_load((out / "config.yaml").read_text())["training"]["learning_rate"] == 1e-3
    change = {"training.learning_rate": {"before": 0.003, "after": 0.001}}
    assert logged(out, "resumed_with_changes") == {12: change}
    assert json.loads((out / "status.json").read_text())["state"] == "done"


def test_sft_resumed_with_a_new_learning_rate_trains_with_it(tiny_model_dir, tmp_path):
    """transformers restores the old rate with the scheduler; the callback puts the new one back."""
    out = tmp_path / "sft"
    stages.run_in_process("sft", tiny_model_dir, tmp_path, out, "training.max_steps=8")
    fake_death(out)
    stages.run_in_process("sft", tiny_model_dir, tmp_path, out, "training.max_steps=12", "training.learning_rate=1e-3",
                          resume=True, allow_changes=True)
    rates = logged(out, "train/learning_rate")
    assert [rates[s] for s in range(1, 13)] == [3e-3] * 8 + [1e-3] * 4


def test_the_pipeline_records_changes_a_resumed_stage_took(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = load_config(TINY, [f"runs_dir={tmp_path}", "stages=[reward]", f"model={tiny_model_dir}",
                                f"reward.data.train={stages.preference_file(tmp_path / 'p.jsonl')}",
                                "reward.training.save_steps=1", "reward.model.adapter=null"])
    Pipeline(config, echo=lambda _: None).run()
    fake_death(tmp_path / "tiny" / "reward")
    changed = load_config(TINY, [f"runs_dir={tmp_path}", "stages=[reward]", f"model={tiny_model_dir}",
                                 f"reward.data.train={tmp_path / 'p.jsonl'}", "reward.training.save_steps=1",
                                 "reward.model.adapter=null", "reward.training.learning_rate=1e-3"])
    with pytest.raises(AlignError, match=r"--resume \(resume=True\) with settings that differ"):
        Pipeline(changed, echo=lambda _: None).run()
    result = Pipeline(changed, echo=lambda _: None).run(allow_changes=True)
    assert result.manifest["stages"]["reward"]["resumed_with_changes"] == {
        "training.learning_rate": {"before": 0.003, "after": 0.001}}
    assert result.manifest["stages"]["reward"]["status"] == "done"


@pytest.mark.parametrize("damaged", ["trainable.safetensors", "optimizer.pt", "state.json"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(damaged, tiny_model_dir, tmp_path):
    """A full disk leaves 0-byte or cut files in the newest checkpoint: resume takes the older one and
    still ends at the uninterrupted figures."""
    data = stages.preference_file(tmp_path / "prefs.jsonl")
    whole = stages.run_in_process("reward", tiny_model_dir, data, tmp_path / "whole")
    out = tmp_path / "cut"
    stages.run_in_process("reward", tiny_model_dir, data, out)
    fake_death(out)
    (out / "checkpoints" / "checkpoint-12" / damaged).write_bytes(b"")
    assert StageDir(out).newest_checkpoint().name == "checkpoint-9"
    resumed = stages.run_in_process("reward", tiny_model_dir, data, out, resume=True)
    assert {k: v for k, v in resumed.items() if not stages.UNTIMED.search(k)} == \
           {k: v for k, v in whole.items() if not stages.UNTIMED.search(k)}


def test_a_cut_transformers_checkpoint_is_passed_over(tiny_model_dir, tmp_path):
    out = tmp_path / "sft"
    stages.run_in_process("sft", tiny_model_dir, tmp_path, out, "training.max_steps=8")
    weights = out / "checkpoints" / "checkpoint-8" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert StageDir(out).newest_checkpoint().name == "checkpoint-4"


def test_a_full_disk_is_one_message_and_the_status_says_failed(tiny_model_dir, tmp_path, monkeypatch):
    """The checkpoint cannot be written, and neither can a new status file: status.json is rewritten
    in place, and the command ends with one line naming the file."""
    import errno
    import tempfile

    import align.core.checkpoint as checkpoint

    def no_space(directory, *args, **kwargs):
        target = Path(directory) / "checkpoint-3" / "optimizer.pt"
        monkeypatch.setattr(tempfile, "mkstemp", full)  # from here on nothing new can be created
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_checkpoint", no_space)
    data = stages.preference_file(tmp_path / "prefs.jsonl")
    out = tmp_path / "reward"
    with stages.one_thread():
        result = CliRunner().invoke(cli, ["reward", *sum((["--set", s] for s in stages.stage_overrides(
            "reward", tiny_model_dir, data)), []), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.count("error: ") == 1 and "Traceback" not in result.output
    assert f"error: {out}/checkpoints/checkpoint-3/optimizer.pt: No space left on device (free space there, then " \
           f"--resume continues from the newest checkpoint)" in result.output
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and "No space left on device" in status["error"]


def test_an_output_directory_that_cannot_be_written_is_one_message(tmp_path, monkeypatch):
    import errno

    import align.core.rundir as rundir

    real = rundir.Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(rundir.Path, "mkdir", read_only)
    result = CliRunner().invoke(cli, ["eval", "--models", "base=tiny-random-llama", "--prompts",
                                      str(ROOT / "data" / "demo" / "heldout.jsonl"), "--out", str(tmp_path / "ro")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (f"error: {tmp_path / 'ro'}: Read-only file system "
                                                      f"(a read-only file system: write elsewhere with --out)")


def test_a_corrupt_manifest_is_kept_aside_and_rebuilt_from_the_stages(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    settings = [f"runs_dir={tmp_path}", "stages=[reward]", f"model={tiny_model_dir}",
                f"reward.data.train={stages.preference_file(tmp_path / 'p.jsonl')}"]
    Pipeline(load_config(TINY, settings), echo=lambda _: None).run()
    manifest = tmp_path / "tiny" / "manifest.json"
    manifest.write_bytes(b'{"name": "tiny", "stages": {"rew')  # cut by a full disk
    result = CliRunner().invoke(cli, ["status", str(tmp_path / "tiny")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"error: {manifest}: cannot be read (" in result.output
    said = []
    rebuilt = Pipeline(load_config(TINY, settings), echo=said.append).run()
    assert any("could not be read" in line and "kept as manifest.json.unreadable" in line for line in said)
    assert rebuilt.manifest["stages"]["reward"]["status"] == "done"
    assert (tmp_path / "tiny" / "manifest.json.unreadable").read_bytes() == b'{"name": "tiny", "stages": {"rew'
    assert CliRunner().invoke(cli, ["status", str(tmp_path / "tiny")]).exit_code == 0
