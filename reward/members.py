"""A reward-model ensemble in a reward stage directory: where its members are, what each saw, and the
ensemble's held-out figures.

    runs/reward/ensemble/member-0/    one reward model's weights folder each (LoRA adapter and head,
    runs/reward/ensemble/member-1/    tokenizer, base record, normaliser.json), written whole or not at
    ...                               all, plus eval_rewards.json: the raw rewards it gave the held-out set

A single reward model keeps its `adapter/` (or `model/`) folder; `member_dirs` tells the layouts apart and
`load` gives either a RewardModel or a RewardEnsemble, which score alike.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable, Iterator

from align.core.errors import AlignError
from align.reward.ensemble import OBJECTIVES, Objective, combine, disagreement
from align.reward.formats import Group, regroup
from align.reward.metrics import ranking_metrics
from align.reward.score import NORMALISER, Normaliser, RewardModel, conversation_text, read_normaliser, score_texts, weights_dir

ENSEMBLE = "ensemble"
EVAL_REWARDS = "eval_rewards.json"
MANIFEST = "ensemble.json"  # written when every member is: {"members": K}
MEMBER = "member-"


def member_dir(stage_dir: str | Path, member: int) -> Path:
    return Path(stage_dir) / ENSEMBLE / f"{MEMBER}{member}"


def prefix(member: int) -> str:
    """metrics.json's keys for one member's own figures: `member0/eval/accuracy`, ..."""
    return f"member{member}/"


def member_dirs(path: str | Path) -> list[Path] | None:
    """The members' folders, in order, of an ensemble stage directory (or of its ensemble/ folder); None
    when `path` holds a single reward model. An ensemble whose run has not finished every member is refused:
    scoring with the members that happen to be there would be another reward than the one trained."""
    path = Path(path)
    folder = path / ENSEMBLE if (path / ENSEMBLE).is_dir() else path  # the stage directory, or its ensemble/
    if not folder.is_dir():
        return None
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(MEMBER) and p.name[len(MEMBER):].isdigit()]
    if not found:
        return None
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise AlignError(f"{folder}: an ensemble whose training has not finished (no {MANIFEST}); "
                         f"`align reward --resume` with the same settings finishes it")
    count = int(json.loads(manifest.read_text(encoding="utf-8"))["members"])
    wanted = [folder / f"{MEMBER}{k}" for k in range(count)]
    missing = [p.name for p in wanted if not (p / NORMALISER).is_file()]
    if missing:
        raise AlignError(f"{folder}: {MANIFEST} names {count} members but {', '.join(missing)} is missing")
    return wanted


def write_manifest(stage_dir: str | Path, count: int) -> None:
    from align.core.rundir import write_json_atomic

    write_json_atomic(Path(stage_dir) / ENSEMBLE / MANIFEST, {"members": count})


def check(path: str | Path) -> None:
    """A reward model's or every ensemble member's folder, checked as `load` will read it (score.weights_dir)."""
    for directory in member_dirs(path) or [Path(path)]:
        weights_dir(directory)


def read_member(stage_dir: str | Path, member: int) -> tuple[list[list[float]], Normaliser] | None:
    """A finished member's eval rewards and normaliser, or None when it has not finished (its folder is
    renamed into place only when whole)."""
    directory = member_dir(stage_dir, member)
    if not (directory / NORMALISER).is_file():
        return None
    rewards_file = directory / EVAL_REWARDS
    rewards = json.loads(rewards_file.read_text(encoding="utf-8")) if rewards_file.is_file() else []
    return rewards, read_normaliser(directory / NORMALISER)


def bootstrap(groups: list[Group], seed: int, member: int) -> list[Group]:
    """A member's resample of the training prompts: as many as there are, drawn with replacement."""
    return random.Random(f"{seed} bootstrap {member}").choices(groups, k=len(groups))


def figures(eval_groups: list[Group], eval_rewards: list[list[list[float]]],
            normalisers: list[Normaliser]) -> dict[str, Any]:
    """The ensemble's held-out figures: ranking figures of the members' mean normalised reward (eval/*), and
    eval/disagreement, the members' standard deviation per completion averaged over the completions."""
    import torch

    scores = torch.tensor([[n(r) for rs in rewards for r in rs] for rewards, n in zip(eval_rewards, normalisers)])
    grouped = regroup(eval_groups, combine(scores, "mean").tolist())
    out = {k: v for k, v in ranking_metrics(eval_groups, grouped).items() if "calibration" not in k}
    out["eval/disagreement"] = float(disagreement(scores).mean())
    out["eval/members"] = len(normalisers)
    return out


class RewardEnsemble:
    """K reward models on one loaded base, each its LoRA adapter and head: r(x, y) is the `objective` of the
    members' normalised rewards. It scores like a RewardModel whose rewards are already normalised (its
    `normaliser` is the identity), so callers need not tell the two apart."""

    def __init__(self, model: Any, tokenizer: Any, normalisers: list[Normaliser], objective: Objective = "mean",
                 uwo_lambda: float = 1.0, max_length: int = 512):
        self.model, self.tokenizer, self.normalisers = model, tokenizer, normalisers
        self.objective, self.uwo_lambda, self.max_length = objective, uwo_lambda, max_length
        self.normaliser = Normaliser()
        self.last_members: Any = None  # (K, N) the members' normalised rewards of the latest call

    @classmethod
    def load(cls, directories: list[Path], objective: Objective = "mean", uwo_lambda: float = 1.0,
             max_length: int = 512) -> "RewardEnsemble":
        from align.core import modeling

        own = [weights_dir(d) for d in directories]
        for k, directory in enumerate(own):
            if not (directory / "adapter_config.json").is_file():
                raise AlignError(f"{directory}: member {k} is not a LoRA adapter; an ensemble's members share one base")
        first = RewardModel.load(own[0], max_length)
        model, normalisers = first.model, [first.normaliser]
        base = modeling.recorded_base(own[0])
        for k, directory in enumerate(own[1:], start=1):
            if modeling.recorded_base(directory)["resolved"] != base["resolved"]:
                raise AlignError(f"{directory}: member {k} was trained on another base than member 0")
            model = modeling.load_adapter(model, str(directory), trainable=False, name=member_name(k))
            normalisers.append(read_normaliser(directory / NORMALISER))
        return cls(model.eval(), first.tokenizer, normalisers, objective, uwo_lambda, max_length)

    def members(self) -> Iterator[int]:
        """Each member's adapter active in turn."""
        for k in range(len(self.normalisers)):
            self.model.set_adapter(member_name(k))
            yield k

    def normalised(self, raw: Callable[[], Any]) -> Any:
        """`raw()` (raw rewards (N,) of the active model) run once per member, each normalised by its own
        normaliser, combined by the objective; the members' scores are kept in `last_members`."""
        import torch

        scores = torch.stack([self.normalisers[k](raw()) for k in self.members()])  # (K, N)
        self.last_members = scores
        return combine(scores, self.objective, self.uwo_lambda)

    def score_texts(self, texts: list[str], batch_size: int = 16, max_tokens: int | None = None):
        return self.normalised(lambda: score_texts(self.model, self.tokenizer, texts, self.max_length, batch_size,
                                                   max_tokens))

    def score(self, prompts: list, completions: list[str], batch_size: int = 16):
        texts = [conversation_text(self.tokenizer, p, c) for p, c in zip(prompts, completions)]
        return self.score_texts(texts, batch_size)


def member_name(k: int) -> str:
    """A member's adapter name on the shared base (peft's `default` for the first, as RewardModel loads it)."""
    return "default" if k == 0 else f"{MEMBER}{k}"


def load(path: str | Path, objective: Objective = "mean", uwo_lambda: float = 1.0,
         max_length: int = 512) -> RewardModel | RewardEnsemble:
    """The reward model or ensemble in `path` (a reward stage directory or a weights folder)."""
    if objective not in OBJECTIVES:
        raise AlignError(f"reward ensemble objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")
    directories = member_dirs(path)
    if directories is None:
        return RewardModel.load(path, max_length)
    return RewardEnsemble.load(directories, objective, uwo_lambda, max_length)
