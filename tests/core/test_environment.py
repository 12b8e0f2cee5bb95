"""`align --version`, `align env`, and the versions a run records."""

from __future__ import annotations

import importlib.metadata
import json

import yaml
from click.testing import CliRunner

from align.cli import cli
from align.core.environment import versions


def test_version_and_env_name_what_the_run_uses():
    assert CliRunner().invoke(cli, ["--version"]).output.strip() == f"align {importlib.metadata.version('align')}"
    out = CliRunner().invoke(cli, ["env"]).output
    for name in ("python", "torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets"):
        assert f"- {name}: {versions()[name]}" in out
    assert "- device: cpu:" in out and "align cache" in out


def test_a_stages_config_yaml_and_a_runs_manifest_record_the_versions(tmp_path):
    from align.core.rundir import StageDir

    out = StageDir(tmp_path / "stage")
    out.path.mkdir()
    out.write_config("training:\n  learning_rate: 0.1\n")
    text = (tmp_path / "stage" / "config.yaml").read_text()
    assert text.startswith("# ran with python ") and f"torch {versions()['torch']}" in text.splitlines()[0]
    assert yaml.safe_load(text) == {"training": {"learning_rate": 0.1}}  # still the config, read back

    from align.pipeline import Pipeline, load_config

    pipeline = Pipeline(load_config("configs/pipeline/tiny.yaml", [f"runs_dir={tmp_path / 'runs'}"]))
    pipeline.root.mkdir(parents=True)
    pipeline.write_manifest({"stages": {}})
    assert json.loads((pipeline.root / "manifest.json").read_text())["versions"] == versions()
