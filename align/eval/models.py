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
from align.core.saved_models import is_sequence_classifier
from align.core.soft_prompt import add_virtual_tokens, load_soft_prompt

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
    soft_prompt: bool = False  # a prompt-tuning adapter: run as virtual tokens (align.core.soft_prompt)
    trained_on: str | None = None  # the base's quantization the adapter was trained against, when recorded

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
    trained_on = None
    if (directory / modeling.BASE_FILE).exists():
        try:
            record = modeling.recorded_base(directory)
            base, trained_on = record["resolved"], record.get("quantization")
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
    return ModelSpec(name, source, base, directory, lora=config.get("peft_type") == "LORA",
                     soft_prompt=config.get("peft_type") == "PROMPT_TUNING", trained_on=trained_on)


def _resolved(name: str, base: str) -> str:
    try:
        return modeling.resolve_model_path(base)
    except AlignError as e:
        raise ModelError(f"model {name!r}: {e}") from None


def _refuse_reward_model(name: str, directory: Path) -> None:
    if is_sequence_classifier(directory):
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
    soft_prompt: list[int] = field(default_factory=list)
    """Token ids of a prompt-tuned model's virtual tokens (align.core.soft_prompt), put before its prompts."""


@dataclass
class View:
    """A model as it runs: a network with one adapter active, or with every adapter off."""

    label: str
    network: Network
    adapter: str | None  # None: the base alone
    prefix: tuple[int, ...] = ()  # a soft prompt's virtual tokens, before every context this model reads
    demonstrations: tuple[dict, ...] = ()  # chat turns before every prompt (the in-context row, few_shot.py)

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


def base_quantization(specs: dict[str, ModelSpec], setting: str) -> dict[tuple[str, str], str]:
    """The precision each shared base loads in. `auto`: 4-bit NF4 where an adapter on it was trained
    against NF4 (QLoRA), so adapters see the weights they learned on; full precision otherwise."""
    out: dict[tuple[str, str], str] = {}
    for spec in specs.values():
        wanted = setting if setting != "auto" else ("nf4" if spec.trained_on == "nf4" else "none")
        out[spec.group] = "nf4" if "nf4" in (out.get(spec.group), wanted) else wanted
    return out


def dequantize_4bit(model: Any) -> int:
    """Swap every bitsandbytes 4-bit linear layer for a plain one holding its dequantised weights.

    The values are exactly the NF4-rounded weights, so scores do not move; but where there is no GPU,
    bitsandbytes dequantises on every forward and a 135M model runs about 2.5x slower than this.
    Also works on layers that peft already wrapped (their `base_layer`). Returns how many were swapped.
    """
    import bitsandbytes as bnb
    import torch

    swapped = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, bnb.nn.Linear4bit):
                continue
            weight = bnb.functional.dequantize_4bit(child.weight.data, child.weight.quant_state)
            dtype = child.compute_dtype or torch.float32
            linear = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                     device=weight.device, dtype=dtype)
            linear.weight.data = weight.to(dtype)
            if child.bias is not None:
                linear.bias.data = child.bias.data.to(dtype)
            linear.requires_grad_(False)
            setattr(module, child_name, linear)
            swapped += 1
    if swapped and hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None  # plain weights now: peft wraps them as ordinary linear layers
    return swapped


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


class ModelPool:
    """Every model of the evaluation, each base loaded once."""

    def __init__(self, specs: dict[str, ModelSpec], quantization: str):
        self.specs = specs
        self.quantization = base_quantization(specs, quantization)
        self.networks: dict[tuple[str, str], Network] = {}
        for spec in specs.values():
            network = self.networks.get(spec.group)
            if network is None:
                network = self.networks[spec.group] = self._load_base(spec, self.quantization[spec.group])
            if spec.soft_prompt:
                network.soft_prompt = add_virtual_tokens(network.model, load_soft_prompt(spec.adapter))
            elif spec.adapter is not None:
                self._load_adapter(network, spec)

    def quantization_of(self, name: str) -> str:
        return self.quantization[self.specs[name].group]

    def view(self, name: str) -> View:
        spec, network = self.specs[name], self.networks[self.specs[name].group]
        if network.soft_prompt:  # the base itself, its soft prompt before every context
            return View(name, network, None, tuple(network.soft_prompt))
        return View(name, network, spec.name if spec.adapter is not None else None)

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
        if quantization == "nf4" and not on_gpu():
            dequantize_4bit(model)
        return Network(model, tokenizer)

    @staticmethod
    def _load_adapter(network: Network, spec: ModelSpec) -> None:
        try:
            network.model = modeling.load_adapter(network.model, str(spec.adapter), trainable=False, name=spec.name)
        except AlignError as e:
            raise ModelError(f"model {spec.name!r}: {e}") from None
        network.model.eval()
        network.adapters.append(spec.name)
