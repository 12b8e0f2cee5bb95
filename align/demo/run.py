"""`align demo` (`make demo`): the whole pipeline, the `smollm2-demo` pipeline preset, on the embedded
SmolLM2-135M-Instruct and the shipped demo data: SFT, reward model, PPO, evaluation."""

from __future__ import annotations

from pathlib import Path


def run_demo(out_dir: Path, echo=print):
    from align.core.presets import find_preset
    from align.pipeline import Pipeline, load_config

    out_dir = Path(out_dir)
    config = load_config(find_preset("smollm2-demo", "pipeline").path, [f"runs_dir={out_dir.parent}", f"name={out_dir.name}"])
    return Pipeline(config, echo=echo).run()
