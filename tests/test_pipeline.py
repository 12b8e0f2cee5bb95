"""`align run`: the tiny preset end to end through the CLI, a run killed after its SFT stage and
resumed through the API, finished stages skipped, and the same figures from both routes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from align.cli import cli
from align.core.errors import ConfigError
from align.pipeline import Pipeline, load_config, status_rows

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "pipeline" / "tiny.yaml"
FIGURES = {"sft": "eval/loss", "reward": "eval/accuracy", "ppo": "objective/scores", "eval": "aligned/reward_mean"}


@pytest.fixture(autouse=True)
def at_root(monkeypatch, tmp_path_factory):
    monkeypatch.chdir(ROOT)  # the preset names its stage configs and data relative to the repository
    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path_factory.getbasetemp() / "align-cache"))


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """The tiny pipeline as a user runs it: `align run --config configs/pipeline/tiny.yaml`."""
    runs = tmp_path_factory.mktemp("runs")
    os.environ["ALIGN_CACHE"] = str(tmp_path_factory.getbasetemp() / "align-cache")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        result = CliRunner().invoke(cli, ["run", "--config", str(TINY), "--set", f"runs_dir={runs}"])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return runs / "tiny", result.output


def stage_metrics(root: Path) -> dict[str, dict]:
    return {stage: json.loads((root / stage / "metrics.json").read_text()) for stage in FIGURES}


def test_tiny_pipeline_runs_every_stage_and_reports(cli_run):
    root, output = cli_run
    manifest = json.loads((root / "manifest.json").read_text())
    assert sorted(manifest["stages"]) == ["eval", "ppo", "reward", "sft"]
    assert all(e["status"] == "done" and e["seconds"] > 0 for e in manifest["stages"].values())
    assert (root / "sft" / "adapter" / "adapter_config.json").exists()
    assert (root / "eval" / "report.html").exists()
    # the stages were wired: the reward model and the policy started from the SFT adapter
    ppo = (root / "ppo" / "config.yaml").read_text()
    assert str(root / "sft" / "adapter") in ppo and str(root / "reward") in ppo
    assert "report: " in output and "aligned" in output
    metrics = stage_metrics(root)
    assert {"base/reward_mean", "sft/reward_mean", "aligned/reward_mean"} <= set(metrics["eval"])


def test_status_prints_the_manifest(cli_run):
    root, _ = cli_run
    result = CliRunner().invoke(cli, ["status", str(root)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[:2] for line in lines[1:5]] == [["sft", "done"], ["reward", "done"], ["ppo", "done"],
                                                         ["eval", "done"]]


def test_a_rerun_skips_finished_stages_and_refuses_changed_settings(cli_run):
    root, _ = cli_run
    before = {s: (root / s / "status.json").read_text() for s in FIGURES}
    said = []
    Pipeline(load_config(TINY, [f"runs_dir={root.parent}"]), echo=said.append).run()
    assert {s: (root / s / "status.json").read_text() for s in FIGURES} == before
    assert sum("skipped" in line for line in said) == 4
    with pytest.raises(ConfigError, match=r"ppo.*training.updates: 4 then, 5 now.*--from-stage ppo"):
        Pipeline(load_config(TINY, [f"runs_dir={root.parent}", "ppo.training.updates=5"]), echo=said.append).run()


def test_killed_after_sft_resumes_there_and_matches_an_uninterrupted_run(cli_run, tmp_path):
    """Killed (SIGKILL) once its SFT stage is done; the API run that follows keeps that SFT, runs the
    reward model, and both stages' figures equal those of the uninterrupted CLI run (same seeds)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    two_stages = "stages=[sft, reward]"  # the later stages are the CLI run's; this keeps the test short
    proc = subprocess.Popen([sys.executable, "-m", "align", "run", "--config", str(TINY), "--set", f"runs_dir={tmp_path}",
                             "--set", two_stages], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sft_status = tmp_path / "tiny" / "sft" / "status.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if sft_status.exists() and json.loads(sft_status.read_text())["state"] == "done":
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    sft_done = sft_status.read_text()
    rows = {r["stage"]: r["status"] for r in status_rows(tmp_path / "tiny")}
    assert rows["sft"] == "done" and rows.get("reward") in (None, "pending", "dead")

    said = []
    result = Pipeline(load_config(TINY, [f"runs_dir={tmp_path}", two_stages]), echo=said.append).run()
    assert sft_status.read_text() == sft_done
    assert any("sft: done before, skipped" in line for line in said)
    for stage in ("sft", "reward"):
        resumed = json.loads((tmp_path / "tiny" / stage / "metrics.json").read_text())
        reference = json.loads((cli_run[0] / stage / "metrics.json").read_text())
        key = FIGURES[stage]
        assert resumed[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-6), stage
    assert result.metrics == json.loads((tmp_path / "tiny" / "reward" / "metrics.json").read_text())
    assert result.report is None


def test_overrides_reach_the_stage_they_name(tmp_path):
    config = load_config(TINY, [f"runs_dir={tmp_path}", "name=x", "sft.training.epochs=3", "model=some/model",
                                "stages=[sft, dpo]"])
    pipeline = Pipeline(config)
    sft = pipeline.stage_config("sft")
    dpo = pipeline.stage_config("dpo")
    assert sft.training.epochs == 3 and sft.model.name == "some/model"
    assert sft.out_dir == str(tmp_path / "x" / "sft") and sft.tracking.group == "x"
    assert dpo.model.adapter == str(tmp_path / "x" / "sft" / "adapter")


@pytest.mark.parametrize("stages, message", [
    ("[ppo, sft]", "out of order"), ("[sft, ppo, dpo]", "pick one"), ("[sft, bogus]", "unknown stage"),
])
def test_bad_stage_lists_are_refused(stages, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [f"stages={stages}"])


def test_a_typo_in_a_stages_set_names_the_pipeline_files_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(f"name: x\nruns_dir: {tmp_path}\nstages: [sft]\nsft:\n  config: {ROOT / 'configs/sft/smollm2-demo.yaml'}\n"
                    "  set:\n    training.max_length: 96\n    training.max_lenght: 96\n")
    with pytest.raises(ConfigError, match=rf"^{path}:8: unknown key 'training.max_lenght'"):
        Pipeline(load_config(path)).run()
    # set again on the command line, the key is no longer the file's: no line of it is named
    with pytest.raises(ConfigError, match=r"^\S+smollm2-demo.yaml \(pipeline stage 'sft'\): unknown key 'training.max_lenght'"):
        Pipeline(load_config(path, ["sft.training.max_lenght=1"])).run()


def test_a_typo_in_a_late_stage_fails_before_any_stage_runs(tmp_path):
    config = load_config(TINY, [f"runs_dir={tmp_path}", "eval.no_such_setting=1"])
    with pytest.raises(ConfigError, match="no_such_setting"):
        Pipeline(config).run()
    assert not (tmp_path / "tiny" / "sft").exists()
