"""`align run`: the stages of one alignment run in order, under runs/NAME/, with a manifest.

One pipeline file names the base model, which stages run, and each stage's config file plus
overrides. The pipeline wires the stages together (the SFT adapter feeds the reward model and
the policy, the reward model feeds PPO/GRPO/RLOO and the evaluation), gives every stage the
same W&B group, and records each stage's status, time and headline figures in
runs/NAME/manifest.json. A finished stage is skipped on a re-run; a killed or failed stage
resumes from its newest checkpoint; `from_stage` reruns from a point.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from align.convert.prepare import PREPARED, PrepareSpec, prepare
from align.core import heap, presets, rundir, tracking
from align.core.config import (build, describe_changes, dump_yaml, parse_override, read_config_file, read_yaml_mapping,
                               rename_old_keys, set_dotted, to_dict)
from align.core.dirlock import DirLock, lock_holder
from align.core.errors import AlignError, ConfigError
from align.core.input_paths import resolve_defaults, resolve_inputs
from align.core.tracking import TrackingConfig
from align.stages import POLICY_STAGES, STAGES, headline

MANIFEST = "manifest.json"


@dataclass
class StageSpec:
    config: str | None = None
    """The stage's own YAML config: a file (relative to the pipeline file) or the name of one of the stage's
    presets (`smollm2-qlora`, see `align configs list`); its defaults when absent."""
    set: dict[str, Any] = field(default_factory=dict)
    """Dotted overrides on top of it, e.g. {training.epochs: 2}."""


@dataclass
class PipelineSettings:
    name: str = "demo"
    """The run's name: outputs go to RUNS_DIR/NAME/<stage>, and it is the W&B group."""
    runs_dir: str = "runs"
    """Where runs go: RUNS_DIR/NAME."""
    model: str = "smollm2-135m-instruct"
    """The base model of every stage: the embedded default, a local dir or a hub id."""
    stages: list[str] = field(default_factory=lambda: ["sft", "reward", "ppo", "eval"])
    """Which stages run, in the registry's order (align.stages); at most one that makes the policy."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """W&B for every stage (the group is the run name)."""
    data: PrepareSpec = field(default_factory=PrepareSpec)
    """One published preference source for every stage (its `source` and `files`): converted once into
    RUNS_DIR/NAME/data, whole prompts held out, and each stage's data wired to it. Unset: each stage reads
    the files its own config names."""

    def __post_init__(self):
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"stages: unknown stage {unknown[0]!r} (known: {', '.join(STAGES)})")
        if len(set(self.stages)) != len(self.stages):
            raise ConfigError(f"stages: a stage is listed twice: {self.stages}")
        if not self.stages:
            raise ConfigError("stages: name at least one stage")
        if sum(s in POLICY_STAGES for s in self.stages) > 1:
            raise ConfigError(f"stages: pick one of {', '.join(POLICY_STAGES)} (got {self.stages})")
        order = [list(STAGES).index(s) for s in self.stages]
        if order != sorted(order):
            raise ConfigError(f"stages: {self.stages} are out of order; the order is {', '.join(STAGES)}")
        check_run_name(self.name)


# the pipeline file's `<stage>: {config, set}` for every registered stage
PipelineConfig = make_dataclass("PipelineConfig", [(name, StageSpec, field(default_factory=StageSpec)) for name in STAGES],
                                bases=(PipelineSettings,))
PipelineConfig.__module__ = __name__
PipelineConfig.__doc__ = "A pipeline file: the run's settings, and each stage's config file and overrides (StageSpec)."


def check_run_name(name: str) -> None:
    """A run name is one plain path component: `..`, `.`, `a/b` or `` would put the run's stage
    directories (and what --overwrite clears) outside RUNS_DIR."""
    seps = [sep for sep in (os.sep, os.altsep, "/", "\\") if sep]
    if not name.strip() or name in (".", "..") or any(sep in name for sep in seps) or "\0" in name:
        raise ConfigError(f"name: {name!r} must be a plain directory name (not empty, '.', '..', or with a path "
                          f"separator): the run goes to RUNS_DIR/NAME")


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> PipelineConfig:
    """A pipeline config from YAML (a file, or a pipeline preset's name: `tiny`), then overrides. `--set sft.training.epochs=2` reaches into a
    stage's settings (its `set`); `--set name=x`, `--set model=...`, `--set stages=[sft,eval]` are
    the pipeline's own."""
    lines: dict[str, str] = {}
    data: dict[str, Any] = {}
    if path is not None:
        path = presets.config_file(path, "pipeline")
        data = read_yaml_mapping(path, lines)
        resolve_file_paths(data, path)
    for item in overrides:
        key, value = parse_override(item)
        stage, _, rest = key.partition(".")
        if stage in STAGES and rest and rest != "config" and not rest.startswith("set"):
            spec = data.setdefault(stage, {})
            if not isinstance(spec, dict):
                spec = data[stage] = {"config": spec}
            lines.pop(f"{stage}.set.{rest}", None)  # now the command line's, not the file's
            (rest, value), = rename_old_keys(STAGES[stage].config_class(), {rest: value}, "--set", dotted=True).items()
            spec.setdefault("set", {})[rest] = value
            lines.pop(f"{stage}.set.{rest}", None)
        else:
            set_dotted(data, key, value)
    source = f"{path if path is not None else 'defaults'}{' + --set' if overrides else ''}"
    config = build(PipelineConfig, data, source, lines=lines)
    config.key_lines = lines  # where each key sits (FILE:LINE), so a stage's `set:` typo names its line
    return config


def resolve_file_paths(data: dict[str, Any], path: Path) -> None:
    """The paths a pipeline file names, read from its directory (align.core.input_paths): its data files, and in
    each stage's entry the config (a file there, or a preset's name) and the data files its `set:` names."""
    resolve_inputs(PipelineSettings, data, path.parent, str(path))
    for stage, spec in data.items():
        if stage not in STAGES:
            continue
        if not isinstance(spec, dict):
            spec = data[stage] = {"config": spec}
        if isinstance(spec.get("config"), str):
            spec["config"] = str(presets.config_file(spec["config"], stage, base=path.parent))
        if isinstance(spec.get("set"), dict):
            cls = STAGES[stage].config_class()
            spec["set"] = rename_old_keys(cls, spec["set"], f"{path}: {stage}.set", dotted=True)
            resolve_inputs(cls, spec["set"], path.parent, str(path))


@dataclass
class PipelineResult:
    root: Path
    manifest: dict[str, Any]
    stages: dict[str, dict[str, Any]]
    """Each stage's metrics.json."""

    @property
    def metrics(self) -> dict[str, Any]:
        """The evaluation's figures (`aligned/reward_mean`, ...) when it ran, else the last stage's."""
        if "eval" in self.stages:
            return self.stages["eval"]
        return self.stages[list(self.stages)[-1]] if self.stages else {}

    @property
    def report(self) -> Path | None:
        path = self.root / "eval" / "report.html"
        return path if path.exists() else None


class Pipeline:
    def __init__(self, config: PipelineConfig, echo: Callable[[str], None] = print):
        self.config = config
        self.root = Path(config.runs_dir) / config.name
        self.echo = echo

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def stage_config(self, stage: str) -> Any:
        """The stage's typed config: its file, then the pipeline's wiring, then the user's overrides."""
        cls = STAGES[stage].config_class()
        spec: StageSpec = getattr(self.config, stage)
        lines: dict[str, str] = {}
        data: dict[str, Any] = {}
        if spec.config:
            data = read_config_file(cls, presets.config_file(spec.config, stage), lines)
        for key, value in self.wiring(stage).items():
            set_dotted(data, key, value)
        # a key the pipeline file sets is blamed on its line there, not on the stage's file
        prefix = f"{stage}.set."
        lines.update({k[len(prefix):]: v for k, v in getattr(self.config, "key_lines", {}).items()
                      if k.startswith(prefix)})
        for key, value in spec.set.items():
            set_dotted(data, key, value)
        resolve_defaults(cls, data, presets.share_root())
        # always the pipeline's, whatever a stage file or override said: the manifest points here
        data["out_dir"] = str(self.stage_dir(stage))
        data.setdefault("tracking", {}).update(
            wandb=self.config.tracking.wandb, project=self.config.tracking.project, group=self.config.name,
            run_name=f"{self.config.name}-{stage}",
        )
        return build(cls, data, f"{spec.config or 'defaults'} (pipeline stage {stage!r})", lines=lines)

    def wiring(self, stage: str) -> dict[str, Any]:
        """How the stages feed each other: the SFT adapter starts the reward model and the policy,
        the reward model scores PPO/GRPO/RLOO and the evaluation."""
        runs = set(self.config.stages)
        sft_adapter = str(self.stage_dir("sft") / rundir.ADAPTER) if "sft" in runs else None
        reward_dir = str(self.stage_dir("reward")) if "reward" in runs else None
        if stage == "eval":
            models = {"base": self.config.model}
            if "sft" in runs:
                models["sft"] = str(self.stage_dir("sft"))
            policy = next((s for s in self.config.stages if s in POLICY_STAGES), None)
            if policy:
                models["aligned"] = str(self.stage_dir(policy))
            curves = {s: str(self.stage_dir(s)) for s in self.config.stages if s != "eval"}
            # without a reward stage in the run there is no reward model of the run's to score with: a
            # reward model from elsewhere is named in the stage's `set:`, which comes after the wiring
            wired: dict[str, Any] = {"models": models, "stages": curves, "reward": reward_dir, **self.data_wiring(stage)}
            if "sft" in runs:  # the in-context baseline's demonstrations come from what SFT trained on
                wired["few_shot_data"] = self.stage_config("sft").data.train[0].path
            if not reward_dir:
                wired["best_of"] = 0
            return wired
        wired = {"model.name": self.config.model, **self.data_wiring(stage)}
        if stage != "sft":
            wired["model.adapter"] = sft_adapter
        if stage in ("ppo", "grpo", "rloo") and reward_dir:
            wired["reward.model"] = reward_dir
            wired["reward.function"] = None
        return wired

    def data_wiring(self, stage: str) -> dict[str, Any]:
        """Each stage's data keys -> the files `prepare` writes (align.convert.prepare), when the run has a source."""
        if self.config.data.source is None:
            return {}
        files = {name.split(".")[0]: str(self.root / "data" / name) for name in ("pairs.jsonl", "sft.jsonl",
                                                                                 "prompts.jsonl", "heldout.jsonl")}
        return {"sft": {"data.train": [{"path": files["sft"]}]},
                "ppo": {"data.prompts": files["prompts"], "data.eval_prompts": files["heldout"]},
                "grpo": {"data.prompts": files["prompts"]}, "rloo": {"data.prompts": files["prompts"]},
                "eval": {"prompts": files["heldout"]}}.get(stage, {"data.train": files["pairs"]})

    def prepare_data(self, manifest: dict[str, Any], again: bool) -> None:
        """Convert the run's source into RUNS_DIR/NAME/data, once: a re-run reuses it while its settings
        stand, and refuses changed ones unless every stage runs again (its stages were trained on it)."""
        spec, out = self.config.data, self.root / "data"
        if spec.source is None:
            return
        try:
            before = rundir.read_json(out / PREPARED)
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            before = None
        if before is not None and before.get("settings") == to_dict(spec):
            self.echo(f"[{self.config.name}] data: prepared before, reused ({out})")
        elif before is None or again:
            missing = [f for f in spec.files if not Path(f).exists()]
            if missing:
                raise ConfigError(f"data.files: {missing[0]}: no such file; --set data.files=[PATH,...] names the "
                                  f"{spec.source} files to use (paths on the command line are from the current "
                                  f"directory, those in the pipeline file from the file's)")
            self.echo(f"[{self.config.name}] data: converting {spec.source} -> {out}")
            before = prepare(spec, out)
            counts = before["prompts"]
            self.echo(f"[{self.config.name}] data: {before['records']['pairs.jsonl']} training records of "
                      f"{counts['train']} prompts, {counts['heldout']} prompts held out ({out / PREPARED})")
        else:
            changed = {k: v for k, v in to_dict(spec).items() if before.get("settings", {}).get(k) != v}
            raise ConfigError(f"{out} was prepared with other data settings ({', '.join(f'data.{k}' for k in changed)}); "
                              f"rerun every stage with --from-stage {self.config.stages[0]}, or give the run a new --name")
        manifest["data"] = {k: before[k] for k in ("prompts", "records", "conversion")}
        self.write_manifest(manifest)

    def run(self, *, from_stage: str | None = None, allow_changes: bool = False) -> PipelineResult:
        """Run what is not done yet (everything from `from_stage` on, when given). `allow_changes` lets
        a stage resumed from its checkpoint take changed settings (recorded in the manifest)."""
        if from_stage is not None and from_stage not in self.config.stages:
            raise ConfigError(f"--from-stage {from_stage!r} is not one of this run's stages: {', '.join(self.config.stages)}")
        # every config is built before any stage runs: a typo in the last stage fails in seconds, not hours
        configs = {stage: self.stage_config(stage) for stage in self.config.stages}
        with self.claimed():
            manifest = self.read_manifest()
            self.prepare_data(manifest, again=from_stage == self.config.stages[0])
            rerun = False
            results: dict[str, dict[str, Any]] = {}
            for stage in self.config.stages:
                rerun = rerun or stage == from_stage
                results[stage] = self.run_stage(stage, configs[stage], manifest, rerun=rerun,
                                                allow_changes=allow_changes)
            manifest["finished"] = _now()
            self.write_manifest(manifest)
        return PipelineResult(self.root, manifest, results)

    @contextlib.contextmanager
    def claimed(self) -> Iterator[None]:
        """The run directory for this run alone: align's marker in it, its lock held by the main
        process to the end, and SIGTERM turned into an exception, so the manifest says `failed` for a
        stop that lands between two stages as for one inside a stage."""
        main = int(os.environ.get("RANK", "0")) == 0
        lock = DirLock(self.root, f"align run --name {self.config.name}")
        if main:
            rundir.refuse_foreign(self.root)
            lock.acquire()
        previous = rundir.on_sigterm(rundir.raise_terminated)
        try:
            if main:
                rundir.mark(self.root, "run")
            yield
        finally:
            rundir.on_sigterm(previous)
            lock.release()

    def run_stage(self, stage: str, config: Any, manifest: dict[str, Any], *, rerun: bool,
                  allow_changes: bool = False) -> dict[str, Any]:
        out = rundir.StageDir(self.stage_dir(stage))
        state = out.state()
        if state == "running":
            holder = lock_holder(out.path) or {}
            raise AlignError(f"{out.path} is in use by a running process (pid {holder.get('pid')} on {holder.get('host')})")
        entry = manifest["stages"].setdefault(stage, {"out_dir": str(out.path)})
        if state == "done" and not rerun:
            check_same_config(out, config, stage)
            self.echo(f"[{self.config.name}] {stage}: done before, skipped ({out.path})")
            entry.update(status="done", headline=headline(stage, out.metrics()))
            self.write_manifest(manifest)
            return out.metrics()
        resume = not rerun and state in ("failed", "dead") and out.newest_checkpoint() is not None
        # replace only what this run's stage left: a rerun, or a stage killed before it wrote a status;
        # a failed stage with no checkpoint is replaced by the stage itself
        overwrite = not resume and (rerun or state is None) and out.path.exists()
        how = f"resuming from {out.newest_checkpoint().name}" if resume else "starting"
        self.echo(f"[{self.config.name}] {stage}: {how} -> {out.path}")
        train = STAGES[stage].train()
        started = time.time()
        # the stage before freed its models: hand those pages back, or this stage's peak starts on them
        heap.release()
        tracking.reset_peak_memory()
        changes = out.changed_settings(dump_yaml(config)) if resume and allow_changes else {}
        entry.update(status="running", started=_now(), finished=None, error=None,
                     resumed_with_changes={k: {"before": a, "after": b} for k, (a, b) in changes.items()} or None)
        self.write_manifest(manifest)
        try:
            figures = train(config, overwrite=overwrite, resume=resume, allow_changes=resume and allow_changes)
        except BaseException as e:
            entry.update(status="failed", error=f"{type(e).__name__}: {e}", seconds=round(time.time() - started, 1))
            self.write_manifest(manifest)
            raise
        entry.update(status="done", finished=_now(), seconds=round(time.time() - started, 1),
                     headline=headline(stage, figures))
        self.write_manifest(manifest)
        self.echo(f"[{self.config.name}] {stage}: done in {entry['seconds']:.0f} s "
                  + " ".join(f"{k}={v:.4g}" for k, v in entry["headline"].items()))
        return figures

    def read_manifest(self) -> dict[str, Any]:
        """The manifest so far; a fresh one when there is none, or when it cannot be read (each stage's
        own status.json is the truth it summarises, and the unreadable one is kept beside it)."""
        fresh = {"name": self.config.name, "created": _now(), "stages": {}}
        try:
            manifest = rundir.read_json(self.root / MANIFEST)
            if not isinstance(manifest, dict) or not isinstance(manifest.get("stages", {}), dict):
                raise ValueError("not a manifest")
        except FileNotFoundError:
            manifest = fresh
        except (ValueError, UnicodeDecodeError) as e:
            kept = self.root / f"{MANIFEST}.unreadable"
            os.replace(self.root / MANIFEST, kept)
            self.echo(f"[{self.config.name}] warning: {self.root / MANIFEST} could not be read ({e}); "
                      f"kept as {kept.name}, starting a new one from the stages' own status")
            manifest = fresh
        manifest["config"] = to_dict(self.config)
        manifest["stages"] = {s: manifest["stages"][s] for s in self.config.stages if s in manifest.get("stages", {})}
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        # under `accelerate launch` every process runs the pipeline; one writes its manifest
        if int(os.environ.get("RANK", "0")) != 0:
            return
        from align.core.environment import versions

        manifest["updated"] = _now()
        manifest["versions"] = dict(versions())
        rundir.write_json_atomic(self.root / MANIFEST, manifest)


def check_same_config(out: rundir.StageDir, config: Any, stage: str) -> None:
    """A finished stage is reused only for the settings it ran with: reusing it under changed
    settings would report figures of a run that was never made."""
    changed = out.changed_settings(dump_yaml(config), type(config))
    if changed:
        raise ConfigError(f"{out.path} finished with different settings ({describe_changes(changed)}); "
                          f"rerun it with --from-stage {stage}, or give the run a new --name")


def status_rows(root: Path) -> list[dict[str, Any]]:
    """The manifest of runs/NAME, each stage's state taken from its own status.json (the truth
    when the pipeline process was killed before it could update the manifest)."""
    try:
        manifest = rundir.read_json(Path(root) / MANIFEST)
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"{root}: no {MANIFEST} here; is it a run directory of `align run`?") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{Path(root) / MANIFEST}: cannot be read ({e}); `align run` with the same name "
                          f"starts a new one from the stages' own status") from None
    if not isinstance(manifest, dict):
        raise ConfigError(f"{Path(root) / MANIFEST}: not a manifest of `align run`")
    rows = []
    stages = manifest.get("stages", {})
    order = [s for s in manifest.get("config", {}).get("stages", []) if s in stages]
    for stage, entry in ((s, stages[s]) for s in order):
        out = rundir.StageDir(entry.get("out_dir", Path(root) / stage))
        state = out.state() or "pending"  # listed, never started: killed before it could begin
        figures = headline(stage, out.metrics()) or entry.get("headline", {})
        rows.append({"stage": stage, "status": state, "seconds": entry.get("seconds"), "out_dir": str(out.path),
                     "headline": figures, "error": (out.status() or {}).get("error") if state == "failed" else None})
    return rows


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
