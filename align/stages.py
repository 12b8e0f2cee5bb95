"""Every stage, declared once. The pipeline, the CLI, the Python API and the manifest read this table.

    Stage         a stage's name, config class, entry point, whether it makes the aligned policy,
                  and the figures that stand for its result
    STAGES        name -> Stage, in the order a pipeline runs them
    stage(name)   the Stage, or a ConfigError naming the known ones
    stage_config  a stage's typed config from YAML and `--set` overrides

Config classes and entry points are named as "module:attribute" and imported on first use, so
`import align` and `align --help` load no deep-learning library. Every entry point is called as
`train(config, *, overwrite=False, resume=False, allow_changes=False) -> figures`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from align.core.errors import ConfigError


@dataclass(frozen=True)
class Stage:
    name: str
    config: str
    """"module:Class" of the stage's typed config."""
    entry: str
    """"module:function" that runs it into config.out_dir and returns its figures."""
    summary: str
    """One line: the CLI's help for the stage's command."""
    headline: tuple[str, ...]
    """The figures `align status`, the manifest and the stage's command show for its result."""
    policy: bool = False
    """It makes the aligned policy: a pipeline runs at most one such stage, evaluated as `aligned`."""

    @property
    def api_name(self) -> str:
        """Its function's name in the Python API: `align.train_sft`, ..., `align.evaluate`."""
        return "evaluate" if self.name == "eval" else f"train_{self.name}"

    def config_class(self) -> type:
        return _attribute(self.config)

    def train(self) -> Callable[..., dict[str, Any]]:
        return _attribute(self.entry)


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("sft", "align.sft.config:SFTConfig", "align.sft.train:train",
          "Stage 1: instruction SFT (QLoRA by default) with TRL's SFTTrainer.",
          ("eval/loss_before", "eval/loss")),
    Stage("reward", "align.reward.config:RewardConfig", "align.reward.train:train",
          "Stage 2: train a reward model from rankings or preferences (`align reward score` scores with one).",
          ("eval_before/accuracy", "eval/accuracy")),
    Stage("ppo", "align.ppo.config:PPOConfig", "align.ppo.train:train",
          "Stage 3: PPO of the policy against the reward model, under a KL penalty to the reference.",
          ("eval_before/reward_mean", "eval/reward_mean", "eval/kl"), policy=True),
    Stage("dpo", "align.prefs.config:DPOConfig", "align.prefs.train:dpo",
          "DPO on preferences or rankings, through TRL's DPOTrainer.",
          ("train/loss_mean", "eval/rewards/accuracies"), policy=True),
    Stage("kto", "align.prefs.config:KTOConfig", "align.prefs.train:kto",
          "KTO on preferences or rankings made unpaired (good or bad completions), through TRL's KTOTrainer.",
          ("train/loss_mean", "eval/rewards/margins"), policy=True),
    Stage("orpo", "align.prefs.config:ORPOConfig", "align.prefs.train:orpo",
          "ORPO on preferences or rankings, no reference model, through TRL's experimental ORPOTrainer.",
          ("train/loss_mean", "eval/rewards/accuracies"), policy=True),
    Stage("grpo", "align.prefs.config:OnlineConfig", "align.prefs.train:grpo",
          "GRPO with our reward model (or a rule function), through TRL's GRPOTrainer.",
          ("train/reward", "train/loss_mean"), policy=True),
    Stage("rloo", "align.prefs.config:RLOOConfig", "align.prefs.train:rloo",
          "RLOO with our reward model (or a rule function), through TRL's RLOOTrainer.",
          ("train/reward", "train/loss_mean"), policy=True),
    Stage("eval", "align.eval.config:EvalConfig", "align.eval.run:evaluate",
          "Stage 4: compare models on held-out prompts; writes report.html, metrics.json, generations.jsonl.",
          ("sft/reward_mean", "aligned/reward_mean", "aligned/win_rate_vs_sft")),
)}
POLICY_STAGES = tuple(name for name, s in STAGES.items() if s.policy)


def stage(name: str) -> Stage:
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r} (known: {', '.join(STAGES)})")
    return STAGES[name]


def stage_config(name: str, path: str | Path | None = None, overrides: Iterable[str] = ()) -> Any:
    """The typed config of one stage from YAML (a file, or a preset's name: `smollm2-qlora`) and `key=value`
    overrides."""
    from align.core.config import load_config
    from align.core.presets import config_file

    return load_config(stage(name).config_class(), config_file(path, name) if path is not None else None, overrides)


def headline(name: str, metrics: dict[str, Any]) -> dict[str, float]:
    """The stage's headline figures that `metrics` holds as numbers."""
    return {k: metrics[k] for k in stage(name).headline if isinstance(metrics.get(k), (int, float))}


def _attribute(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)
