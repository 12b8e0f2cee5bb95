"""The stage directory: refuse to clobber, resume rules, status on failure, atomic writes."""

from __future__ import annotations

import json
import os

import pytest

from align.core.errors import AlignError
from align.core.rundir import StageDir, write_json_atomic


def test_running_then_done(tmp_path):
    out = StageDir(tmp_path / "s")
    out.prepare()
    with out.running():
        assert out.status()["state"] == "running" and out.status()["pid"] == os.getpid()
    assert out.state() == "done"
    with pytest.raises(AlignError, match=r"already holds a finished run; pass --overwrite \(overwrite=True\)"):
        StageDir(tmp_path / "s").prepare()
    StageDir(tmp_path / "s").prepare(overwrite=True)
    assert not (tmp_path / "s" / "status.json").exists()


def test_failure_is_recorded_with_the_error(tmp_path):
    out = StageDir(tmp_path / "s")
    out.prepare()
    with pytest.raises(ValueError):
        with out.running():
            raise ValueError("loss is nan")
    status = out.status()
    assert status["state"] == "failed" and status["error"] == "ValueError: loss is nan"
    assert "Traceback" in status["traceback"]


def test_a_running_status_whose_process_died_reads_dead(tmp_path):
    out = StageDir(tmp_path / "s")
    out.prepare()
    out.set_status("running")
    status = out.status()
    status["pid"] = 2**22 + 7  # no such process
    write_json_atomic(out.file("status.json"), status)
    assert out.state() == "dead"


def test_resume_rules(tmp_path):
    out = StageDir(tmp_path / "s")
    with pytest.raises(AlignError, match="no checkpoint to resume from"):
        out.prepare(resume=True)
    out.prepare()
    for step in (10, 9):  # an empty directory is no checkpoint: each holds its state
        (out.checkpoints / f"checkpoint-{step}").mkdir(parents=True)
        (out.checkpoints / f"checkpoint-{step}" / "state.json").write_text("{}")
    with pytest.raises(AlignError, match="pass --resume \(resume=True\) to continue"):
        out.prepare()
    out.prepare(resume=True)
    assert out.newest_checkpoint().name == "checkpoint-10"  # numeric, not lexical, order
    with pytest.raises(AlignError, match="contradict"):
        out.prepare(resume=True, overwrite=True)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"a": 1})
    write_json_atomic(tmp_path / "m.json", {"a": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    assert oct((tmp_path / "m.json").stat().st_mode & 0o777) != oct(0o600)


def test_a_run_that_failed_before_its_first_checkpoint_is_replaced_without_overwrite(tmp_path):
    """Nothing finished and nothing to resume: the corrected command needs no --overwrite."""
    out = StageDir(tmp_path / "s")
    out.prepare()
    with pytest.raises(AlignError):
        with out.running():
            (out.path / "metrics.jsonl").write_text('{"step": 1}\n')
            raise AlignError("adapter x does not fit base y")
    again = StageDir(tmp_path / "s")
    again.prepare()
    assert sorted(p.name for p in again.path.iterdir()) == [".align", ".lock"]
    with again.running():
        pass
    assert again.state() == "done"


def test_a_failed_run_with_a_checkpoint_is_kept_for_resume(tmp_path):
    out = StageDir(tmp_path / "s")
    out.prepare()
    with pytest.raises(ValueError):
        with out.running():
            (out.checkpoints / "checkpoint-3").mkdir(parents=True)
            (out.checkpoints / "checkpoint-3" / "state.json").write_text("{}")
            raise ValueError("boom")
    with pytest.raises(AlignError, match=r"holds an unfinished run \(failed: ValueError: boom\); pass --resume \(resume=True\)"):
        StageDir(tmp_path / "s").prepare()
