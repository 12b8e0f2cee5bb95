"""The CLI through click's runner: bad input exits 2 with FILE:LINE before any model loads."""

from __future__ import annotations

import json

from click.testing import CliRunner

from align.cli import cli
from tests.conftest import DEMO


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)


def test_help_lists_the_commands():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("sft", "reward", "data", "demo"):
        assert command in result.output


def test_validate_reports_every_bad_record(write_jsonl):
    good = run("data", "validate", DEMO / "rankings.jsonl", "--kind", "rankings")
    assert good.exit_code == 0 and "300 good, 0 bad" in good.output
    path = write_jsonl("r.jsonl", [{"prompt": "Q", "completions": ["a"], "ranks": [0]}, "{oops"])
    bad = run("data", "validate", path, "--kind", "rankings")
    assert bad.exit_code == 2
    assert "r.jsonl:1: field \"completions\": a ranking needs at least 2" in bad.output
    assert "r.jsonl:2: malformed JSON" in bad.output and "0 good, 2 bad" in bad.output


def test_sft_refuses_bad_data_before_loading_a_model(write_jsonl, tmp_path, monkeypatch):
    from align.core import modeling

    def must_not_load(*a, **k):
        raise AssertionError("model loaded before data was validated")

    monkeypatch.setattr(modeling, "load_base", must_not_load)
    path = write_jsonl("sft.jsonl", [{"instruction": "x", "input": "", "output": ""}])
    result = CliRunner().invoke(cli, ["sft", "--set", f"data.train={path}", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert 'sft.jsonl:1: field "output": empty' in result.output
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_unknown_override_and_missing_config(tmp_path):
    result = CliRunner().invoke(cli, ["sft", "--set", "training.lr=1"])
    assert result.exit_code == 2 and "unknown key 'training.lr'" in result.output
    result = CliRunner().invoke(cli, ["sft", "--config", str(tmp_path / "no.yaml")])
    assert result.exit_code == 2 and "no.yaml: config file not found" in result.output


def test_sft_through_the_cli(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = ["sft", "--set", f"model.name={tiny_model_dir}", "--set", f"data.train={DEMO / 'sft.jsonl'}",
            "--set", "data.max_records=16", "--set", "training.max_steps=2", "--set", "tracking.wandb=false",
            "--set", "model.lora.r=4", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["train/steps"] == 2
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "already holds a finished run" in again.output


def test_convert_prints_counts_and_lists_skipped(tmp_path):
    from tests.convert.test_convert import FIXTURES

    result = CliRunner().invoke(cli, ["data", "convert", "--from", "hh-rlhf", str(FIXTURES / "hh-rlhf.jsonl"),
                                      "-o", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 0, result.output
    assert '"read": 7, "written": 4, "pairs": 4, "skipped": 3' in result.output
    assert "hh-rlhf.jsonl:6: field \"rejected\": identical to chosen" in result.output
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 4


def test_reward_train_and_score_through_the_cli(tiny_model_dir, tmp_path):
    out = tmp_path / "rm"
    result = CliRunner().invoke(cli, [
        "reward", "--set", f"model.name={tiny_model_dir}", "--set", f"data.train={DEMO / 'rankings.jsonl'}",
        "--set", "training.epochs=0.2", "--set", "tracking.wandb=false", "--set", "model.lora.r=4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["train/steps"] == 7  # 270 groups = 34 batches of 8, x 0.2 epochs
    scored = CliRunner().invoke(cli, ["reward", "score", "--model", str(out), "--data", str(DEMO / "heldout.jsonl"),
                                      "-o", str(tmp_path / "s.jsonl")])
    assert scored.exit_code == 2 and 'no completion to score' in scored.output  # prompts alone have none
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "6"}) + "\n")
    scored = CliRunner().invoke(cli, ["reward", "score", "--model", str(out), "--data", str(data), "-o", str(tmp_path / "s.jsonl")])
    assert scored.exit_code == 0, scored.output
    record = json.loads((tmp_path / "s.jsonl").read_text())
    assert {"reward_chosen", "reward_chosen_normalised", "reward_rejected", "reward_rejected_normalised"} <= set(record)


def test_reward_refuses_a_ranking_with_one_completion(write_jsonl, tmp_path):
    path = write_jsonl("r.jsonl", [{"prompt": "Q", "completions": ["a", "b"], "ranks": [0, 1]},
                                   {"prompt": "Q", "completions": ["a"], "ranks": [0]}])
    result = CliRunner().invoke(cli, ["reward", "--set", f"data.train={path}", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and 'r.jsonl:2: field "completions": a ranking needs at least 2' in result.output


def test_validate_infers_the_kind_and_says_when_another_fits(write_jsonl):
    inferred = run("data", "validate", DEMO / "rankings.jsonl")
    assert inferred.exit_code == 0
    assert "300 good, 0 bad (rankings, inferred; taken by reward, dpo, kto, orpo)" in inferred.output
    pairs = write_jsonl("p.jsonl", [{"prompt": "Q", "chosen": "a", "rejected": "b"}] * 2)
    assert "2 good, 0 bad (preferences, inferred" in run("data", "validate", pairs).output
    assert "(instructions, inferred; taken by sft)" in run("data", "validate", DEMO / "sft.jsonl").output
    assert "(prompts, inferred" in run("data", "validate", DEMO / "prompts.jsonl").output
    wrong = run("data", "validate", DEMO / "rankings.jsonl", "--kind", "preferences")
    assert wrong.exit_code == 2
    lines = wrong.output.strip().splitlines()
    # 300 identical reasons: three shown, the rest counted in one line
    assert len(lines) == 3 + 1 + 2 and lines[3].startswith("  ... and 297 more lines: ")
    assert lines[-1].endswith("these look like rankings (300 of 300 records read as rankings; taken by reward, "
                              "dpo, kto, orpo): check with --kind rankings")


def test_a_stage_without_config_says_which_defaults_it_runs(tiny_model_dir, tmp_path):
    from align.core.presets import demo_data

    result = run("sft", "--set", f"model.name={tiny_model_dir}", "--set", "training.max_steps=1",
                 "--set", "data.max_records=16", "--set", "tracking.wandb=false", "--out", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    assert (f"align sft: no --config, so the built-in defaults: model.name={tiny_model_dir}, "
            f"data.train={demo_data() / 'sft.jsonl'}, out_dir={tmp_path / 's'}") in result.output  # the shipped file


def test_library_warnings_show_only_with_verbose(tiny_model_dir, tmp_path):
    """A reward model's new score head is by design: transformers' load report about it, and the libraries'
    deprecations, are not the user's business unless asked (-v); align's own warnings still show."""
    import os
    import subprocess
    import sys

    rows = "".join(json.dumps({"prompt": f"Q{i}", "chosen": f"good {i}", "rejected": f"bad {i} " * 3}) + "\n" for i in range(8))
    (tmp_path / "p.jsonl").write_text(rows)

    def stderr(*flags):
        out = tmp_path / f"r{len(flags)}"
        result = subprocess.run([sys.executable, "-m", "align", *flags, "reward", "--out", str(out),
                                 *(f"--set={s}" for s in [f"model.name={tiny_model_dir}", f"data.train={tmp_path / 'p.jsonl'}",
                                                          "data.eval_fraction=0", "training.epochs=1",
                                                          "tracking.wandb=false"])],
                                capture_output=True, text=True, timeout=300,
                                # not this process's: a CLI test run in it set TRANSFORMERS_VERBOSITY
                                env={**{k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"},
                                     "HF_HUB_OFFLINE": "1"})
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout + result.stderr

    quiet, verbose = stderr(), stderr("-v")
    assert "LOAD REPORT" not in quiet and "FutureWarning" not in quiet
    assert "LOAD REPORT" in verbose
    assert "align reward: no --config" in quiet  # align's own notes stay


def test_every_stages_help_examples_load():
    """The --config preset and the --set setting each stage's help shows, together (an unknown key raises)."""
    import re

    from align.stages import STAGES, stage_config

    for name in STAGES:
        help_text = " ".join(run(name, "--help").output.split())
        setting = re.search(r"--set (\S+=\S+) \(repeatable\)", help_text)
        preset = re.search(r"e\.g\. --config (\S+)\.", help_text)
        assert setting and preset, name
        stage_config(name, preset.group(1), [setting.group(1)])
    pipeline = " ".join(run("run", "--help").output.split())
    from align.pipeline import Pipeline, load_config as load_pipeline

    preset, setting = re.search(r"e\.g\. --config (\S+)\.", pipeline), re.search(r"--set (ppo\.\S+=\d+)", pipeline)
    Pipeline(load_pipeline(preset.group(1), [setting.group(1)])).stage_config("ppo")


def test_print_config_round_trips_for_every_stage(tmp_path):
    """Its output, fed back as --config, resolves to the same config; each setting's docstring is above it."""
    from align.core.config import load_config, to_dict
    from align.stages import STAGES

    for name, entry in STAGES.items():
        overrides = ["out_dir=runs/elsewhere"]
        printed = run(name, "--print-config", *(f"--set={o}" for o in overrides))
        assert printed.exit_code == 0, (name, printed.output)
        assert printed.output.startswith("# ")  # documented
        path = tmp_path / f"{name}.yaml"
        path.write_text(printed.output)
        again = load_config(entry.config_class(), path)
        assert to_dict(again) == to_dict(load_config(entry.config_class(), None, overrides)), name
    assert "# Rank of the update" in run("sft", "--print-config").output
