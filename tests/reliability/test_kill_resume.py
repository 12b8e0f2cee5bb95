"""Kill and resume: SFT, the reward model and PPO run as their own processes, are killed
(SIGKILL, or SIGTERM) at a seeded random step after their first checkpoint, and resume with
`--resume`. The resumed run must finish, log every step exactly once with the figures an
uninterrupted run logs, and leave no file in its directory that does not parse.

The kill point is drawn per test from a seeded generator, so a failure names a point that can be
run again; where inside its step the signal lands is up to the machine.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess

import pytest
from click.testing import CliRunner

from align.cli import cli
from align.core.rundir import StageDir, replace_dir
from tests.reliability import stages

SEED = 20260101


@pytest.fixture(scope="module")
def reward_data(tmp_path_factory):
    return stages.preference_file(tmp_path_factory.mktemp("data") / "prefs.jsonl")


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, reward_data, tmp_path_factory):
    """Each stage run once in this process, cut nowhere: the figures a resumed run must reproduce."""
    cache = {}

    def get(stage: str) -> list[dict]:
        if stage not in cache:
            out = tmp_path_factory.mktemp(stage) / "whole"
            stages.run_in_process(stage, tiny_model_dir, reward_data, out)
            cache[stage] = stages.step_records(out)
        return cache[stage]

    return get


def resume(stage: str, tiny_model_dir, data, out) -> subprocess.CompletedProcess:
    return subprocess.run([*stages.argv(stage, tiny_model_dir, data, out), "--resume"], cwd=stages.ROOT,
                          env=stages.environment(), capture_output=True, text=True, timeout=600)


def interrupt(stage: str, tiny_model_dir, data, out, tmp_path, step: int, sig: int) -> str:
    """Start the stage (resuming when it ran before), stop it with `sig` at `step`; its output."""
    log = tmp_path / f"stopped-at-{step}.log"
    command = stages.argv(stage, tiny_model_dir, data, out) + (["--resume"] if out.exists() else [])
    process = stages.launch(command, log)
    stages.kill_at(process, out, log, step, sig)
    assert process.returncode in (-sig, 128 + sig), (process.returncode, log.read_text()[-3000:])
    return log.read_text()


def check_resumed(stage: str, out, reference: list[dict], done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert StageDir(out).state() == "done"
    records = stages.step_records(out)
    assert [r["step"] for r in records] == list(range(1, stages.STEPS[stage] + 1))  # each step once, in order
    assert [r["step"] for r in reference] == [r["step"] for r in records]
    for cut, whole in zip(stages.comparable(records), stages.comparable(reference)):
        assert cut.keys() == whole.keys()
        for key, value in whole.items():
            # a resumed process reruns the steps after its checkpoint from the saved weights,
            # optimiser and RNG; the last bits differ only by the order of float sums
            assert cut[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (cut["step"], key)
    checked = stages.check_files_intact(out)
    assert "metrics.jsonl" in checked and "status.json" in checked and any(c.endswith(".safetensors") for c in checked)


def leave_debris(stage: str, out) -> None:
    """What a kill at a worse moment leaves, added by hand so every run meets it: a checkpoint cut
    short (transformers writes its files in place; ours renames a temp dir), the temp file of an
    atomic write, and a log line cut in half."""
    newest = int(StageDir(out).newest_checkpoint().name.split("-")[-1])
    if stage == "sft":
        cut = out / "checkpoints" / f"checkpoint-{newest + 1}"
        cut.mkdir()
        (cut / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00")
    else:
        cut = out / "checkpoints" / f".tmp-checkpoint-{newest + 1}"
        cut.mkdir()
        (cut / "trainable.safetensors").write_bytes(b"\x08\x00\x00")
    (out / ".metrics.json.k1ll3d.tmp").write_text('{"train/lo')
    for log in ("metrics.jsonl", "samples.jsonl"):
        if (out / log).exists():
            with open(out / log, "a") as f:
                f.write('{"step": 99, "upda')


# the reward model is stopped twice: by SIGTERM (what a scheduler sends), which must leave `failed`
# in status.json, then by SIGKILL in the resumed run, which cannot be caught and leaves `running`
SIGNALS = {"sft": [signal.SIGKILL], "reward": [signal.SIGTERM, signal.SIGKILL], "ppo": [signal.SIGKILL]}


def kill_points(stage: str, n: int, seed: int = 0) -> list[int]:
    """n steps after the first checkpoint; each later one waits for steps the run before never
    logged (two past the previous), so it lands in the resumed run."""
    rng, points = random.Random(f"{SEED}-{stage}-{seed}"), []
    low = stages.FIRST_CHECKPOINT[stage] + 1
    for i in range(n):
        high = stages.STEPS[stage] - 2 - 2 * (n - 1 - i)
        points.append(rng.randint(low, high))
        low = points[-1] + 2
    return points


@pytest.mark.parametrize("stage", ["sft", "reward", "ppo"])
def test_killed_run_resumes_to_the_same_result(stage, tiny_model_dir, reward_data, uninterrupted, tmp_path, monkeypatch):
    out, run = tmp_path / "run", StageDir(tmp_path / "run")
    for sig, step in zip(SIGNALS[stage], kill_points(stage, len(SIGNALS[stage]))):
        log = interrupt(stage, tiny_model_dir, reward_data, out, tmp_path, step, sig)
        if sig == signal.SIGTERM:
            assert run.status()["state"] == "failed" and run.status()["error"] == "Terminated: stopped by SIGTERM"
            assert "Traceback" not in log
        else:  # the status still says running, but its process is gone: read as dead, and said so
            assert run.status()["state"] == "running" and run.state() == "dead"
    assert run.newest_checkpoint() is not None
    monkeypatch.chdir(stages.ROOT)
    refused = CliRunner().invoke(cli, stages.argv(stage, tiny_model_dir, reward_data, out)[3:])
    assert refused.exit_code == 2 and "died without finishing" in refused.output and "--resume" in refused.output

    newest = run.newest_checkpoint().name.split("-")[-1]
    leave_debris(stage, out)
    done = resume(stage, tiny_model_dir, reward_data, out)
    assert f"resuming from checkpoint-{newest} a run that died without finishing" in done.stderr
    check_resumed(stage, out, uninterrupted(stage), done)
    if stage == "ppo":  # the updates after the checkpoint were sampled again: each kept once
        samples = [json.loads(line)["update"] for line in (out / "samples.jsonl").read_text().splitlines()]
        assert samples == sorted(samples) and set(samples) == set(range(1, stages.STEPS[stage] + 1))
        assert all(samples.count(u) == samples.count(1) for u in set(samples))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 6))
@pytest.mark.parametrize("stage", ["sft", "reward", "ppo"])
def test_more_kill_points(stage, seed, tiny_model_dir, reward_data, uninterrupted, tmp_path):
    """Three kills in one run at seeded points, each followed by a resume."""
    out = tmp_path / "run"
    for step in kill_points(stage, 3, seed):
        interrupt(stage, tiny_model_dir, reward_data, out, tmp_path, step, signal.SIGKILL)
        assert StageDir(out).state() == "dead"
    check_resumed(stage, out, uninterrupted(stage), resume(stage, tiny_model_dir, reward_data, out))


def test_replace_dir_writes_a_directory_whole_or_keeps_the_old_one(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "weights").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with replace_dir(target) as tmp:
            (tmp / "weights").write_text("half")
            raise KeyboardInterrupt  # a stop halfway through the save
    assert (target / "weights").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["adapter"]
    with replace_dir(target) as tmp:
        (tmp / "weights").write_text("new")
    assert (target / "weights").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["adapter"]
