"""`align demo` (`make demo`): the whole pipeline, configs/pipeline/smollm2-demo.yaml, on the
embedded SmolLM2-135M-Instruct and the shipped demo data: SFT, reward model, PPO, evaluation."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "configs" / "pipeline" / "smollm2-demo.yaml"


def run_demo(out_dir: Path, echo=print):
    from align.pipeline import Pipeline, load_config

    out_dir = Path(out_dir).resolve()
    # the preset names its data and stage configs relative to the repository, like every shipped config
    os.chdir(ROOT)
    config = load_config(PIPELINE, [f"runs_dir={out_dir.parent}", f"name={out_dir.name}"])
    return Pipeline(config, echo=echo).run()
