"""Configs: defaults <- YAML <- --set; unknown keys and wrong types name the key and the file."""

from __future__ import annotations

import pytest
import yaml

from align.core.config import dump_yaml, load_config, read_yaml_mapping
from align.core.errors import ConfigError
from align.sft.config import DataSource, SFTConfig


def test_defaults_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  learning_rate: 1.0e-3\n  batch_size: 4\nmodel:\n  lora: {r: 8}\n")
    config = load_config(SFTConfig, path, ["training.learning_rate=1e-4", "model.lora.r=16"])
    assert config.training.learning_rate == 1e-4  # YAML reads "1e-4" as a string; coerced to float
    assert config.training.batch_size == 4  # from the file
    assert config.model.lora.r == 16  # override beats file
    assert config.model.lora.alpha == 32  # default


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  learning_rat: 1.0e-3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:2: unknown key 'training\.learning_rat'"):
        load_config(SFTConfig, path)
    with pytest.raises(ConfigError, match=r"unknown key 'model\.lora\.rank'"):
        load_config(SFTConfig, None, ["model.lora.rank=4"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.batch_size=eight", "training.batch_size: expected an integer"),
        ("training.learning_rate=fast", "training.learning_rate: expected a number"),
        ("model.quantization=int3", "model.quantization: 'int3' is not one of"),
        ("training.batch_size=0", "training.batch_size: must be > 0"),
        ("model.lora.r=-4", "lora.r: must be >= 1"),
        ("tracking.wandb=maybe", "tracking.wandb: expected true or false"),
        ("training", "expected KEY=VALUE"),
    ],
)
def test_bad_values_are_errors_that_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SFTConfig, None, [override])


def test_bare_path_is_a_source_and_lists_mix(tmp_path):
    config = load_config(SFTConfig, None, ["data.train=a.jsonl"])
    assert config.data.train == [DataSource("a.jsonl", 1.0)]
    config = load_config(SFTConfig, None, ["data.train=[a.jsonl, {path: b.jsonl, weight: 0.5}]"])
    assert config.data.train == [DataSource("a.jsonl"), DataSource("b.jsonl", 0.5)]


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(SFTConfig, tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(SFTConfig, bad)


def test_dumped_config_loads_back_to_the_same_config(tmp_path):
    config = load_config(SFTConfig, None, ["model.lora.r=8", "data.template=alpaca"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(config))
    assert load_config(SFTConfig, path) == config
    assert yaml.safe_load(path.read_text())["model"]["lora"]["r"] == 8


def test_a_repeated_key_is_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "c.yaml"
    # safe_load would keep the second `training:` and drop batch_size without a word
    path.write_text("training:\n  batch_size: 4\nmodel:\n  lora: {r: 8}\ntraining:\n  learning_rate: 1.0e-4\n")
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, path)
    assert str(err.value) == f"{path}:5: duplicate key 'training' (first at line 1)"
    path.write_text("model:\n  lora:\n    r: 4\n    alpha: 8\n    r: 16\n")
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, path)
    assert str(err.value) == f"{path}:5: duplicate key 'r' (first at line 3)"
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, None, ["model.lora={r: 4, r: 8}"])
    assert str(err.value) == "--set 'model.lora={r: 4, r: 8}': duplicate key 'r'"


def test_a_merge_key_may_still_be_overridden(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: &base {k: 1, j: 2}\nother:\n  <<: *base\n  k: 3\n")
    assert read_yaml_mapping(path) == {"base": {"k": 1, "j": 2}, "other": {"k": 3, "j": 2}}


@pytest.mark.parametrize(
    ("content", "overrides", "message"),
    [
        ("training:\n  learning_rate: .inf\n", [], "c.yaml:2: training.learning_rate: must be a finite number, got inf"),
        ("training:\n  batch_size: 4\n  max_grad_norm: .nan\n", [],
         "c.yaml:3: training.max_grad_norm: must be a finite number, got nan"),
        ("training:\n  weight_decay: -.inf\n", [], "c.yaml:2: training.weight_decay: must be a finite number, got -inf"),
        ("training:\n  batch_size: 4\n", ["training.learning_rate=inf"],
         "c.yaml + --set: training.learning_rate: must be a finite number, got inf"),
        ("training:\n  epochs: 1e400\n", [], "c.yaml:2: training.epochs: must be a finite number, got inf"),
        ("data:\n  train:\n    - {path: a.jsonl, weight: .inf}\n", [],
         "c.yaml:3: data.train[0].weight: must be a finite number, got inf"),
    ],
)
def test_non_finite_numbers_are_refused(tmp_path, content, overrides, message):
    # `check(learning_rate > 0)` lets inf through, and training turns it into NaN weights
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, path, overrides)
    assert str(err.value) == message.replace("c.yaml", str(path))


def test_an_optional_number_refuses_nan_and_keeps_null(tmp_path):
    from align.ppo.config import PPOConfig

    with pytest.raises(ConfigError) as err:
        load_config(PPOConfig, None, ["reward.no_eos_penalty=nan"])
    assert str(err.value) == "defaults + --set: reward.no_eos_penalty: must be a finite number, got nan"
    assert load_config(PPOConfig, None, ["reward.no_eos_penalty=null"]).reward.no_eos_penalty is None


def test_a_byte_order_mark_in_a_config_is_dropped(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xef\xbb\xbftraining:\n  batch_size: 4\n")
    assert load_config(SFTConfig, path).training.batch_size == 4
    path.write_bytes(b"\xef\xbb\xbftraining:\n  batch_size: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, path)
    assert str(err.value) == f"{path}:2: training.batch_size: must be > 0, got 0"


def test_an_unknown_key_offers_the_name_meant():
    from align.core.config import ConfigError
    from align.sft.config import SFTConfig

    with pytest.raises(ConfigError, match=r"unknown key 'training.learnig_rate' \(did you mean 'training.learning_rate'\?\)"):
        load_config(SFTConfig, None, ["training.learnig_rate=1e-4"])
    # an old name of the same idea
    with pytest.raises(ConfigError, match=r"unknown key 'ppo' \(did you mean 'training'\?\)"):
        load_config(SFTConfig, None, ["ppo.learning_rate=1e-5"])
    with pytest.raises(ConfigError, match=r"unknown key 'training.save_every' \(did you mean 'training.save_steps'\?\)"):
        load_config(SFTConfig, None, ["training.save_every=10"])
    with pytest.raises(ConfigError, match=r"unknown key 'zzz' \(known here"):  # nothing close: nothing offered
        load_config(SFTConfig, None, ["zzz=1"])


def test_every_stage_names_optimiser_sampling_and_checkpoints_alike():
    """One vocabulary: training.* (optimiser and schedule), generation.* (sampling), training.save_steps."""
    from align.stages import STAGES

    for name, entry in STAGES.items():
        config = entry.config_class()()
        if name != "eval":
            assert hasattr(config.training, "learning_rate") and hasattr(config.training, "save_steps"), name
        if name in ("ppo", "grpo", "rloo", "eval"):
            assert hasattr(config.generation, "max_new_tokens") and hasattr(config.generation, "temperature"), name


def test_old_names_still_load_with_one_notice_each(tmp_path, caplog):
    from align.core.config import ConfigError
    from align.pipeline import Pipeline, load_config as load_pipeline
    from align.ppo.config import PPOConfig
    from align.prefs.config import OnlineConfig

    path = tmp_path / "old.yaml"
    path.write_text("ppo:\n  updates: 7\n  learning_rate: 2.0e-5\nsampling:\n  temperature: 0.9\nsave_every: 3\n"
                    "eval_every: 2\n")
    config = load_config(PPOConfig, path, ["ppo.kl_coef=0.1", "sample_every=4"])
    t = config.training
    assert (t.updates, t.learning_rate, t.kl_coef, t.save_steps, t.eval_steps, t.sample_steps) == (7, 2e-5, 0.1, 3, 2, 4)
    assert config.generation.temperature == 0.9
    notices = [r.getMessage() for r in caplog.records if "the old name works in this release only" in r.getMessage()]
    assert len(notices) == 6 and any("'ppo' is now 'training'" in n and str(path) in n for n in notices)

    path.write_text("ppo:\n  updates: 7\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"old.yaml:3: unknown key 'training.lr'"):  # still its line
        load_config(PPOConfig, path)

    grpo = load_config(OnlineConfig, None, ["training.num_generations=6", "training.max_new_tokens=9"])
    assert (grpo.generation.num_generations, grpo.generation.max_new_tokens) == (6, 9)

    # a pipeline's `set:` and its --set reach the stage under the old names too
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("stages: [ppo]\nppo:\n  set:\n    ppo.updates: 5\n    sampling.max_new_tokens: 11\n")
    stage = Pipeline(load_pipeline(pipeline, ["ppo.save_every=2"])).stage_config("ppo")
    assert (stage.training.updates, stage.generation.max_new_tokens, stage.training.save_steps) == (5, 11, 2)


def test_a_finished_run_of_the_last_release_reads_as_the_same_settings(tmp_path, monkeypatch):
    """Its config.yaml spells PPO's settings the old way, names data relative to where it ran, and lacks a
    setting added since: none of that is a change of what it ran with."""
    import yaml

    from align.core import rundir
    from align.core.config import dump_yaml, to_dict
    from align.ppo.config import PPOConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "Q?"}\n')
    now = load_config(PPOConfig, None, [f"data.prompts={tmp_path / 'prompts.jsonl'}", "training.updates=7"])
    old = to_dict(now)
    old["ppo"], old["sampling"] = old.pop("training"), old.pop("generation")
    for name in ("save_steps", "eval_steps", "sample_steps"):
        old[name.replace("_steps", "_every")] = old["ppo"].pop(name)
    old["data"]["prompts"] = "prompts.jsonl"  # as the cwd read it then
    del old["ppo"]["max_grad_norm"]  # as if added since: the run had its default
    out = rundir.StageDir(tmp_path / "run")
    out.path.mkdir()
    (out.path / rundir.CONFIG).write_text(yaml.safe_dump(old))
    assert out.changed_settings(dump_yaml(now), PPOConfig) == {}
    assert "training.updates" in out.changed_settings(dump_yaml(load_config(PPOConfig, None, ["training.updates=8",
                                                      f"data.prompts={tmp_path / 'prompts.jsonl'}"])), PPOConfig)
