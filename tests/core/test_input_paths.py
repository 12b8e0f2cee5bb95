"""Which directory a config's paths are read from (align.core.input_paths), and presets by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from align.core.config import load_config
from align.core.errors import ConfigError
from align.core.presets import config_file, demo_data, find_preset, presets
from align.ppo.config import PPOConfig
from align.sft.config import SFTConfig


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """A config folder with its data, and a current directory that is not it."""
    (tmp_path / "project" / "data").mkdir(parents=True)
    for name in ("a.jsonl", "b.jsonl", "p.jsonl"):
        (tmp_path / "project" / "data" / name).write_text("{}\n")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path / "project"


def test_paths_in_a_config_file_are_relative_to_the_file_and_command_line_ones_to_the_cwd(elsewhere):
    path = elsewhere / "sft.yaml"
    path.write_text("data:\n  train: [data/a.jsonl, {path: data/b.jsonl, weight: 0.5}]\n  eval: data/p.jsonl\n"
                    "out_dir: runs/x\n")
    config = load_config(SFTConfig, path)
    assert [s.path for s in config.data.train] == [str(elsewhere / "data/a.jsonl"), str(elsewhere / "data/b.jsonl")]
    assert config.data.eval == str(elsewhere / "data/p.jsonl")
    assert config.out_dir == "runs/x"  # a run directory: where runs are written, from the current directory
    given = load_config(SFTConfig, path, ["data.eval=mine.jsonl"])
    assert given.data.eval == "mine.jsonl"  # the command line's: from the current directory, as typed


def test_a_stages_defaults_read_the_shipped_demo_data_from_any_directory(elsewhere):
    config = load_config(PPOConfig)
    assert config.data.prompts == str(demo_data() / "prompts.jsonl") and Path(config.data.prompts).is_file()
    assert config.data.eval_prompts == str(demo_data() / "heldout.jsonl")


def test_a_config_written_for_the_current_directory_still_loads_with_a_notice(elsewhere, caplog):
    (Path.cwd() / "old.jsonl").write_text("{}\n")
    path = elsewhere / "old.yaml"
    path.write_text("data:\n  prompts: old.jsonl\n")
    config = load_config(PPOConfig, path)
    assert config.data.prompts == str(Path.cwd() / "old.jsonl")
    assert any("relative to the config file now" in r.getMessage() and "old.jsonl" in r.getMessage()
               for r in caplog.records)


def test_a_pipeline_reads_its_stage_configs_and_their_data_from_where_each_file_is(elsewhere):
    from align.pipeline import Pipeline, load_config as load_pipeline

    (elsewhere / "stages").mkdir()
    (elsewhere / "stages" / "sft.yaml").write_text("data:\n  train: ../data/a.jsonl\n")
    (elsewhere / "run.yaml").write_text("stages: [sft, ppo]\nsft:\n  config: stages/sft.yaml\n"
                                        "ppo:\n  config: smollm2-qlora\n  set:\n    data.prompts: data/p.jsonl\n")
    pipeline = Pipeline(load_pipeline(elsewhere / "run.yaml", ["sft.data.eval=cli.jsonl"]))
    sft, ppo = pipeline.stage_config("sft"), pipeline.stage_config("ppo")
    assert [s.path for s in sft.data.train] == [str(elsewhere / "data/a.jsonl")]
    assert sft.data.eval == "cli.jsonl"
    assert ppo.data.prompts == str(elsewhere / "data/p.jsonl")  # the pipeline file's `set:`, from its folder
    assert ppo.training.batch_size == 32  # the packaged preset configs/ppo/smollm2-qlora.yaml, by name
    assert ppo.data.eval_prompts == str(demo_data() / "heldout.jsonl")  # the preset's own path, from the preset


def test_presets_are_found_by_name_and_a_missing_one_lists_the_stages_presets(elsewhere):
    assert {p.full_name for p in presets()} >= {"pipeline/tiny", "sft/smollm2-qlora", "eval/smollm2-demo"}
    assert all(p.purpose and not p.purpose.startswith("#") for p in presets())
    assert config_file("smollm2-qlora", "sft") == find_preset("sft/smollm2-qlora").path
    assert config_file("configs/sft/smollm2-demo.yaml", "sft") == find_preset("smollm2-demo", "sft").path
    with pytest.raises(ConfigError, match=r"nope: config file not found, and no sft preset of that name "
                                          r"\(presets: .*smollm2-qlora"):
        config_file("nope", "sft")


def test_a_copied_preset_reads_the_same_files_from_anywhere_and_never_replaces_a_file(elsewhere):
    from align.copy_preset import copy_preset

    preset, copied = copy_preset("ppo/smollm2-demo", "copies/")
    assert copied == Path("copies/smollm2-demo.yaml")
    original, copy = load_config(PPOConfig, preset.path), load_config(PPOConfig, copied)
    assert (copy.data.prompts, copy.data.eval_prompts) == (original.data.prompts, original.data.eval_prompts)
    text = copied.read_text()
    assert text.startswith("# The demo's stage 3") and str(demo_data()) in text  # comments kept, paths absolute
    with pytest.raises(ConfigError, match="already exists"):
        copy_preset("ppo/smollm2-demo", copied)
    with pytest.raises(ConfigError, match="name one of .*pipeline/smollm2-demo"):
        copy_preset("smollm2-demo", "x.yaml")
