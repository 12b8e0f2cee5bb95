"""The models under evaluation, loaded once each: LoRA adapters on one base share it.

A model is named by what the user has: a base (the embedded default, a model directory, a cached hub
id) or one of our stage directories, whose `adapter/` goes on the base its `align_base.json`
records. All LoRA adapters on one base become named adapters of one peft model; that base itself
runs with every adapter disabled (peft's `disable_adapter`), so `base` costs no second copy.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.core import modeling, rundir
from align.core.errors import AlignError

ADAPTER_CONFIG = "adapter_config.json"
# org/name: what a hub id looks like; anything else that is not a directory is a wrong path
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelError(AlignError):
    """A model the user named cannot be found or loaded; the message starts with its name."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # as the user gave it
    base: str  # directory (or cached hub id) of the network's weights
    adapter: Path | None = None  # a peft adapter on top of `base`
    lora: bool = False  # LoRA adapters share their base with other LoRA adapters

    @property
    def group(self) -> tuple[str, str]:
        """Models with the same group run on one loaded network."""
        return (self.base, "" if self.adapter is None or self.lora else self.name)


def resolve(name: str, source: str) -> ModelSpec:
    """Where model `name`'s weights are, without loading them; a ModelError names what is wrong."""
    path = Path(source).expanduser()
    if path.is_dir():
        for candidate in (path / rundir.ADAPTER, path):
            if (candidate / ADAPTER_CONFIG).exists():
                return _adapter_spec(name, source, candidate)
        for candidate in (path / rundir.MODEL, path):
            if (candidate / "config.json").exists():
                _refuse_reward_model(name, candidate)
                return ModelSpec(name, source, str(candidate))
        raise ModelError(f"model {name!r}: {path} holds no model (no config.json) and no adapter "
                         f"(no {ADAPTER_CONFIG} in it or in its {rundir.ADAPTER}/)")
    if path.exists():
        raise ModelError(f"model {name!r}: {source} is a file, not a model or stage directory")
    try:
        base = modeling.resolve_model_path(source)  # the embedded default and other named models become directories
    except AlignError:
        base = source
    if not _available(base):
        raise ModelError(f"model {name!r}: {source}: no such directory (nor a hub model in the local cache)")
    return ModelSpec(name, source, base)


def _adapter_spec(name: str, source: str, directory: Path) -> ModelSpec:
    config = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        raise ModelError(f"model {name!r}: {directory} is a {config['task_type']} adapter (a reward model?), "
                         "not a policy that generates")
    if (directory / modeling.BASE_FILE).exists():
        try:
            base = modeling.recorded_base(directory)["resolved"]
        except (KeyError, json.JSONDecodeError) as e:
            raise ModelError(f"model {name!r}: {directory / modeling.BASE_FILE} is unreadable ({e})") from None
        recorded = "recorded in " + modeling.BASE_FILE
    else:
        base = config.get("base_model_name_or_path")
        if not base:
            raise ModelError(f"model {name!r}: {directory} does not say which base it belongs to "
                             f"(no {modeling.BASE_FILE}, no base_model_name_or_path)")
        recorded = "named in " + ADAPTER_CONFIG
        base = _resolved(name, base)
    if not _available(base):
        raise ModelError(f"model {name!r}: the base {base!r} {recorded} of {directory} is not on this machine")
    return ModelSpec(name, source, base, directory, config.get("peft_type") == "LORA")


def _resolved(name: str, base: str) -> str:
    try:
        return modeling.resolve_model_path(base)
    except AlignError as e:
        raise ModelError(f"model {name!r}: {e}") from None


def _refuse_reward_model(name: str, directory: Path) -> None:
    architectures = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ModelError(f"model {name!r}: {directory} is a sequence classifier (a reward model?), not a policy")


def _available(base: str) -> bool:
    """A model directory, or a hub id whose files are in the local cache (runs stay offline)."""
    if Path(base).is_dir():
        return True
    if not HUB_ID.match(base):
        return False
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(base, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


@dataclass
class Network:
    """One loaded network: a base, maybe carrying named adapters."""

    model: Any
    tokenizer: Any
    adapters: list[str] = field(default_factory=list)


@dataclass
class View:
    """A model as it runs: a network with one adapter active, or with every adapter off."""

    label: str
    network: Network
    adapter: str | None  # None: the base alone

    @property
    def tokenizer(self) -> Any:
        return self.network.tokenizer

    @property
    def eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        extra = getattr(getattr(self.network.model, "generation_config", None), "eos_token_id", None)
        ids.update(extra if isinstance(extra, list) else [extra] if extra is not None else [])
        return sorted(i for i in ids if i is not None)

    def same_vocabulary(self, other: View) -> bool:
        return self.network is other.network or self.tokenizer.get_vocab() == other.tokenizer.get_vocab()

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        model = self.network.model
        if self.adapter is not None:
            model.set_adapter(self.adapter)
            yield model
        elif self.network.adapters:
            with model.disable_adapter():
                yield model
        else:
            yield model


class ModelPool:
    """Every model of the evaluation, each base loaded once."""

    def __init__(self, specs: dict[str, ModelSpec], quantization: str):
        self.specs = specs
        self.networks: dict[tuple[str, str], Network] = {}
        for spec in specs.values():
            network = self.networks.get(spec.group)
            if network is None:
                network = self.networks[spec.group] = self._load_base(spec, quantization)
            if spec.adapter is not None:
                self._load_adapter(network, spec)

    def view(self, name: str) -> View:
        spec = self.specs[name]
        return View(name, self.networks[spec.group], spec.name if spec.adapter is not None else None)

    def base_view(self, name: str) -> View | None:
        """An adapter model's own base with its adapters off; None for a model that is a base."""
        spec = self.specs[name]
        return View(f"base of {name}", self.networks[spec.group], None) if spec.adapter is not None else None

    @staticmethod
    def _load_base(spec: ModelSpec, quantization: str) -> Network:
        try:
            tokenizer = modeling.load_tokenizer(spec.base)
            tokenizer.padding_side = "left"  # generation continues from the prompt's end
            config = modeling.ModelConfig(name=spec.base, quantization=quantization, tuning="lora")
            model = modeling.load_base(config, tokenizer).eval()
        except AlignError as e:
            raise ModelError(f"model {spec.name!r}: {e}") from None
        return Network(model, tokenizer)

    @staticmethod
    def _load_adapter(network: Network, spec: ModelSpec) -> None:
        try:
            network.model = modeling.load_adapter(network.model, str(spec.adapter), trainable=False, name=spec.name)
        except AlignError as e:
            raise ModelError(f"model {spec.name!r}: {e}") from None
        network.model.eval()
        network.adapters.append(spec.name)
