"""`prepare`: one published source -> a pipeline's files, whole prompts held out; and `align run` wiring it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from align.cli import cli
from align.convert.prepare import PrepareSpec, prepare
from align.core.errors import ConfigError, DataError
from align.pipeline import Pipeline, load_config

ROOT = Path(__file__).resolve().parents[2]


def hh_file(tmp_path: Path, n: int = 12) -> Path:
    """HH-RLHF's published layout: gzipped transcripts; prompt 0 is asked twice, prompt 1's preferred reply is empty."""
    rows = []
    for i in range(n):
        q = f"\n\nHuman: question {min(i, 11) if i != 1 else 0}?" if i < 2 else f"\n\nHuman: question {i}?"
        chosen = "" if i == 2 else f" answer {i}"
        rows.append({"chosen": f"{q}\n\nAssistant:{chosen}", "rejected": f"{q}\n\nAssistant: bad {i}"})
    path = tmp_path / "train.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def prompt_text(row: dict) -> str:
    return (row.get("prompt") or row["messages"][:-1])[-1]["content"]


def test_held_out_prompts_are_never_trained_on(tmp_path):
    figures = prepare(PrepareSpec(source="hh-rlhf", files=[str(hh_file(tmp_path))], heldout_prompts=3, seed=1),
                      tmp_path / "data")
    out = tmp_path / "data"
    pairs, sft, prompts, heldout = (lines(out / n) for n in ("pairs.jsonl", "sft.jsonl", "prompts.jsonl", "heldout.jsonl"))
    assert figures["prompts"] == {"distinct": 11, "train": 8, "heldout": 3}  # 12 pairs, "question 0?" twice
    assert len(heldout) == 3 and len(prompts) == 8 and len(pairs) == 8 + (1 if "question 0?" not in map(prompt_text, heldout) else 0)
    held = set(map(prompt_text, heldout))
    for rows in (pairs, sft, prompts):
        assert not held & set(map(prompt_text, rows))
    assert set(map(prompt_text, prompts)) == set(map(prompt_text, pairs))
    # the empty preferred reply is a pair for the reward model, but no demonstration for SFT
    trained_empty = "question 2?" in map(prompt_text, pairs)
    assert figures["sft_left_out_empty_best_reply"] == int(trained_empty) and len(sft) == 8 - int(trained_empty)
    assert all(r["messages"][-1]["content"].strip() for r in sft)
    assert all(("reference" in r) == (prompt_text(r) != "question 2?") for r in heldout)
    assert json.loads((out / "prepared.json").read_text())["records"]["pairs.jsonl"] == len(pairs)
    # the same seed draws the same split
    again = prepare(PrepareSpec(source="hh-rlhf", files=[str(hh_file(tmp_path))], heldout_prompts=3, seed=1), tmp_path / "b")
    assert lines(tmp_path / "b" / "heldout.jsonl") == heldout and again["prompts"] == figures["prompts"]


def test_rankings_give_their_best_completion_to_sft(tmp_path):
    figures = prepare(PrepareSpec(source="oasst", files=[str(ROOT / "tests" / "fixtures" / "oasst.trees.jsonl")],
                                  heldout_prompts=1), tmp_path)
    assert figures["kind"] == "rankings" and figures["prompts"] == {"distinct": 3, "train": 2, "heldout": 1}
    for ranking, dialogue in zip(lines(tmp_path / "pairs.jsonl"), lines(tmp_path / "sft.jsonl")):
        assert dialogue["messages"] == [*ranking["prompt"], {"role": "assistant",
                                                             "content": ranking["completions"][ranking["ranks"].index(0)]}]


def test_too_few_prompts_and_a_non_preference_source_are_refused(tmp_path):
    with pytest.raises(DataError, match="11 distinct prompts, and heldout_prompts is 11"):
        prepare(PrepareSpec(source="hh-rlhf", files=[str(hh_file(tmp_path))], heldout_prompts=11), tmp_path / "d")
    with pytest.raises(ConfigError, match="alpaca writes instructions; a pipeline needs preferences or rankings"):
        PrepareSpec(source="alpaca", files=["a.json"])
    with pytest.raises(ConfigError, match="give the source's files, or a dataset, not both"):
        PrepareSpec(source="hh-rlhf")


def test_a_run_with_a_source_wires_every_stage_to_its_prepared_files(tmp_path, tiny_model_dir):
    config = load_config(ROOT / "configs" / "pipeline" / "tiny.yaml", [
        f"runs_dir={tmp_path}", "data.source=hh-rlhf", f"data.files=[{hh_file(tmp_path)}]", "data.heldout_prompts=3"])
    pipeline = Pipeline(config, echo=lambda _: None)
    data = tmp_path / "tiny" / "data"
    assert [s.path for s in pipeline.stage_config("sft").data.train] == [str(data / "sft.jsonl")]
    assert pipeline.stage_config("reward").data.train == str(data / "pairs.jsonl")
    ppo = pipeline.stage_config("ppo").data
    assert (ppo.prompts, ppo.eval_prompts) == (str(data / "prompts.jsonl"), str(data / "heldout.jsonl"))
    assert pipeline.stage_config("eval").prompts == str(data / "heldout.jsonl")


def test_align_run_prepares_once_and_refuses_changed_data_settings(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(ROOT)
    source = hh_file(tmp_path)
    run = ["run", "--config", "configs/pipeline/tiny.yaml", "--set", f"runs_dir={tmp_path}", "--set", f"model={tiny_model_dir}",
           "--set", "stages=[reward]", "--set", "data.source=hh-rlhf", "--set", f"data.files=[{source}]",
           "--set", "data.heldout_prompts=3", "--set", "reward.training.epochs=1"]
    result = CliRunner().invoke(cli, run)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "tiny" / "manifest.json").read_text())
    assert manifest["data"]["prompts"] == {"distinct": 11, "train": 8, "heldout": 3}
    pairs = manifest["data"]["records"]["pairs.jsonl"]
    assert f"data: {pairs} training records of 8 prompts, 3 prompts held out" in result.output
    assert "data: prepared before, reused" in CliRunner().invoke(cli, run).output
    changed = CliRunner().invoke(cli, [*run, "--set", "data.heldout_prompts=4"])
    assert changed.exit_code == 2 and "was prepared with other data settings (data.heldout_prompts)" in changed.output
    assert "data: converting hh-rlhf" in CliRunner().invoke(cli, [*run, "--set", "data.heldout_prompts=4",
                                                                  "--from-stage", "reward"]).output
    assert json.loads((tmp_path / "tiny" / "data" / "prepared.json").read_text())["prompts"]["heldout"] == 4
