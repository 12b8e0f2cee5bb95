"""One frozen (4-bit) base carrying every model PPO needs, as named LoRA adapters:

    policy     trainable; starts from the SFT adapter when given
    value      trainable, with its own scalar head; starts from the reward adapter and head
               (N+ details: the critic is initialised from the reward model)
    reward     frozen, with the reward model's head
    ref        frozen SFT adapter; with no SFT adapter the reference is the base, adapters off

Never four copies of the model. A reward model on another base or with another tokenizer is
loaded on its own and scores decoded text (see rollout.Scorer).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from align.core import base_model, decoding, model_paths, saved_models, tuning
from align.core.decoding import Sampled
from align.core.errors import AlignError
from align.core.fused_lora import fuse_lora
from align.core.model_config import ModelConfig
from align.core.sampling_weights import sampling_weights
from align.reward.ensemble import Objective, combine
from align.reward.members import member_dirs
from align.reward.score import HEAD_FILE, NORMALISER, Normaliser, read_normaliser, weights_dir

POLICY, VALUE, REWARD, REF = "policy", "value", "reward", "ref"
TRAINABLE = (POLICY, VALUE)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only: left padding must not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def lora_weights(adapter_dir: Path) -> tuple[Any, dict[str, torch.Tensor], torch.Tensor | None]:
    """(LoraConfig, LoRA tensors, score-head weight or None) of a saved adapter."""
    from peft import LoraConfig, PeftConfig
    from safetensors.torch import load_file

    kind = PeftConfig.from_pretrained(str(adapter_dir)).peft_type.value
    if kind != "LORA":
        raise AlignError(f"{adapter_dir}: PPO's shared base takes LoRA adapters; this one is {kind}")
    config = LoraConfig.from_pretrained(str(adapter_dir))
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    head = next((v for k, v in tensors.items() if k.endswith("score.weight")), None)
    return config, {k: v for k, v in tensors.items() if "score" not in k}, head


def load_lora(peft: Any, weights: dict[str, torch.Tensor], adapter: str, source: Path) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(peft, weights, adapter_name=adapter)
    if result.unexpected_keys:
        raise AlignError(f"{source}: adapter does not fit this base (unexpected {result.unexpected_keys[:3]})")


@dataclass
class SharedReward:
    """What of a reward model runs on the shared base: its LoRA adapter and head, or a head on the base
    itself; neither when it was trained on another base or at another precision (it then runs on its
    own, see rollout.Scorer), only its normaliser."""

    normaliser: Normaliser = field(default_factory=Normaliser)
    head: torch.Tensor | None = None  # (1, H) the score head's weight
    lora: tuple[Any, dict[str, torch.Tensor]] | None = None  # (LoraConfig, LoRA tensors)
    directory: Path | None = None
    on_base: bool = False  # the head reads the base's own hidden states, adapters off
    members: list["SharedReward"] = field(default_factory=list)  # an ensemble's, each with its LoRA and head


def shared_base(model_config: ModelConfig, tokenizer: Any, gradient_checkpointing: bool) -> Any:
    """The frozen (4-bit) base the adapters share, with dropout off, ready for adapters to train."""
    base = base_model.load_base(model_config, tokenizer)
    switch_off_dropout(base)
    return tuning.prepare_for_training(base, model_config, gradient_checkpointing=gradient_checkpointing)


def switch_off_dropout(model: Any) -> None:
    """N+ details: no dropout anywhere, or the update's log-probs (train mode) differ from the rollout's
    (eval mode) and the ratio starts away from 1. Attention dropout is a float the attention reads in
    train mode (Llama's `attention_dropout`), not an nn.Dropout, so both kinds are zeroed, and the config's
    fields too, for any module built from it later."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
    config = getattr(model, "config", None)
    for name, value in (config.to_dict() if config is not None else {}).items():
        if ("dropout" in name or "pdrop" in name) and isinstance(value, float):
            setattr(config, name, 0.0)


def policy_adapters(base: Any, model_config: ModelConfig) -> tuple[Any, Any, bool]:
    """The policy adapter on the base: the SFT adapter's weights when one is given, with a frozen copy of
    them as the reference; else a fresh adapter from the LoRA settings, and the base is the reference.

    Returns (the peft model, the policy's LoraConfig, whether a reference adapter was added)."""
    from peft import get_peft_model

    sft = Path(model_config.adapter) if model_config.adapter else None
    if sft is None:
        config, weights = tuning.lora_config(model_config.lora, "CAUSAL_LM"), None
    else:
        config, weights, _ = lora_weights(sft)
    # N+ details: dropout off, or log-prob ratios start away from 1
    config = tuning.for_task(config, "CAUSAL_LM", dropout=0.0)
    peft = get_peft_model(base, copy.deepcopy(config), adapter_name=POLICY)
    if weights is not None:
        load_lora(peft, weights, POLICY, sft)
        peft.add_adapter(REF, copy.deepcopy(config))
        load_lora(peft, weights, REF, sft)
    return peft, config, weights is not None


def shared_reward(reward_path: str | Path | None, model_config: ModelConfig) -> SharedReward:
    """Read the reward model's directory for what can run on the shared base. An ensemble runs there when
    every member is a LoRA adapter of this base: the first member's adapter and head are the reward's (and
    the critic starts from them), the others come as `members`; its normaliser is the identity, as its
    members' scores are normalised before they are combined."""
    if reward_path is None:
        return SharedReward()
    ensemble = member_dirs(reward_path)
    if ensemble is not None:
        members = [shared_reward(d, model_config) for d in ensemble]
        if not all(m.lora is not None for m in members):
            return SharedReward()  # on another base: scored on its own (rollout.text_scorer)
        first = members[0]
        return SharedReward(Normaliser(), first.head, first.lora, first.directory, members=members)
    directory = weights_dir(reward_path)
    record = saved_models.recorded_base(directory)
    # the same weights at the same precision, or the reward model's scores (and normaliser) shift
    same_base = (record["resolved"] == model_paths.resolve_model_path(model_config.name)
                 and record["quantization"] == model_config.quantization)
    normaliser = read_normaliser(directory / NORMALISER)
    if same_base and (directory / "adapter_config.json").exists():
        config, weights, head = lora_weights(directory)
        return SharedReward(normaliser, head, (config, weights), directory)
    if same_base and (directory / HEAD_FILE).exists():
        from safetensors.torch import load_file

        return SharedReward(normaliser, load_file(directory / HEAD_FILE)["weight"], on_base=True)
    return SharedReward(normaliser)


def reward_and_value_adapters(peft: Any, reward: SharedReward, policy_config: Any) -> None:
    """The frozen reward adapter and the value adapter, both from the reward model's LoRA weights (N+
    details: the critic is initialised from the reward model); with no reward adapter, a fresh value
    adapter shaped like the policy's."""
    if reward.lora is None:
        peft.add_adapter(VALUE, copy.deepcopy(policy_config))
        return
    config, weights = reward.lora
    config = tuning.for_task(config, "CAUSAL_LM", dropout=0.0)
    config.modules_to_save = None  # the reward model's head is our reward_head, not one of peft's modules
    for name in (REWARD, VALUE):
        peft.add_adapter(name, copy.deepcopy(config))
        load_lora(peft, weights, name, reward.directory)
    for k, member in enumerate(reward.members[1:], start=1):
        member_config = tuning.for_task(member.lora[0], "CAUSAL_LM", dropout=0.0)
        member_config.modules_to_save = None
        peft.add_adapter(member_adapter(k), copy.deepcopy(member_config))
        load_lora(peft, member.lora[1], member_adapter(k), member.directory)


def member_adapter(k: int) -> str:
    """The adapter of an ensemble's member k on the shared base; the first member's is REWARD."""
    return REWARD if k == 0 else f"{REWARD}-{k}"


def reward_head(reward: SharedReward, hidden: int) -> nn.Linear | None:
    """r(x, y) = w·h at the last real token, frozen; None when no reward model runs on the shared base."""
    if reward.head is None:
        return None
    head = nn.Linear(hidden, 1, bias=False)
    head.weight.data.copy_(reward.head.float())
    return head.requires_grad_(False)


def value_head(reward_head: nn.Linear | None, normaliser: Normaliser, hidden: int) -> nn.Linear:
    """V(s) = w·h + b: the normalised reward to start, V = (w_r·h − mean) / std, the scale of the returns; 0
    with no reward head."""
    head = nn.Linear(hidden, 1, bias=True)
    if reward_head is not None:
        head.weight.data.copy_(reward_head.weight.data / normaliser.std)
        head.bias.data.fill_(-normaliser.mean / normaliser.std)
    else:
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    return head


def contiguous_input(module: nn.Module, args: tuple) -> tuple:
    """A forward pre-hook: the layer's input made contiguous (a copy only where it is a strided view)."""
    return (args[0].contiguous(), *args[1:])


class PolicyStack(nn.Module):
    """The shared base with its adapters and heads; `use(name)` selects what runs."""

    def __init__(self, model_config: ModelConfig, tokenizer: Any, reward_path: str | None, *,
                 gradient_checkpointing: bool = False, ensemble_objective: Objective = "mean",
                 uwo_lambda: float = 1.0, backward_precision: str = "auto"):
        super().__init__()
        if model_config.tuning != "lora":
            raise AlignError(f"PPO trains LoRA adapters on a shared base; model.tuning={model_config.tuning!r} is not supported")
        base = shared_base(model_config, tokenizer, gradient_checkpointing)
        hidden = base.config.hidden_size
        self.peft, policy_config, self.has_ref_adapter = policy_adapters(base, model_config)
        reward = shared_reward(reward_path, model_config)
        self.normaliser, self.reward_on_base = reward.normaliser, reward.on_base
        # the reward head before the adapters: the order the random initialisations are drawn in
        self.reward_head = reward_head(reward, hidden)
        reward_and_value_adapters(self.peft, reward, policy_config)
        self.has_reward_adapter = reward.lora is not None
        # an ensemble: each member's head and normaliser; the critic starts from the first member
        self.member_heads = nn.ModuleList([reward_head(m, hidden) for m in reward.members])
        self.member_normalisers = [m.normaliser for m in reward.members]
        self.ensemble_objective, self.uwo_lambda = ensemble_objective, uwo_lambda
        self.last_members: torch.Tensor | None = None  # (K, B) the members' normalised rewards of the last call
        critic_scale = reward.members[0].normaliser if reward.members else self.normaliser
        self.value_head = value_head(self.reward_head, critic_scale, hidden)
        members = [member_adapter(k) for k in range(1, len(reward.members))]
        self._params = {name: [p for n, p in self.peft.named_parameters()
                               if f".lora_A.{name}." in n or f".lora_B.{name}." in n]
                        for name in (POLICY, VALUE, REWARD, REF, *members)}
        self._settle(backward_precision)

    def _settle(self, backward_precision: str) -> None:
        """Heads on the base's device; trained adapters in fp32 (on GPUs too); our requires_grad; the LoRA
        layers found once, for use() and base_only(), and fused (core/fused_lora.py)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        device = next(self.peft.parameters()).device
        self.value_head.to(device)
        self.member_heads.to(device)
        if self.reward_head is not None:
            self.reward_head.to(device)
        tuning.cast_to_fp32(p for name in TRAINABLE for p in self._params[name])
        # the LoRA layers, found once: adapters switch on every pass of an update (see use())
        self._adapter_layers = [m for m in self.peft.modules() if isinstance(m, BaseTunerLayer)]
        fuse_lora(self.peft, backward_precision)
        self._trainable: dict[str, nn.Parameter] | None = None
        for adapter, params in self._params.items():
            for p in params:
                p.requires_grad_(adapter in TRAINABLE)
        self._active = None
        self._base_pass: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._check_fast_switch()
        # the output layer reads the response's positions, a slice of the hidden states (logits_to_keep):
        # as a strided view the product went through a batched matmul at half the speed (SmolLM2, 4 x 25
        # positions: 103 against 53 ms forward, 168 against 84 forward and back)
        self.peft.get_output_embeddings().register_forward_pre_hook(contiguous_input)

    @property
    def device(self) -> torch.device:
        return next(self.peft.parameters()).device

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.named_trainable().values())

    def named_trainable(self) -> dict[str, nn.Parameter]:
        """Policy and value adapters and the value head, by name: what checkpoints hold.

        Chosen by name, not by requires_grad, which peft's own adapter switching flips."""
        if self._trainable is None:  # the same Parameter objects for the stack's life (only .data is replaced)
            names = {id(p): n for n, p in self.peft.named_parameters()}
            self._trainable = {names[id(p)]: p for adapter in TRAINABLE for p in self._params[adapter]}
            self._trainable.update({f"value_head.{n}": p for n, p in self.value_head.named_parameters()})
        return dict(self._trainable)

    def use(self, name: str) -> None:
        """Activate one adapter.

        Policy and value alternate in every micro-batch, so this is on the hot path. peft's
        PeftModel.set_adapter walks every module of the model and flips requires_grad on every
        adapter, which cost a fifth of a tiny model's PPO update (bench/README.md). Here the LoRA
        layers found at start-up get the active adapter that BaseTunerLayer.set_adapter would give
        them, and requires_grad stays as ours: policy and value trainable, the rest frozen.
        Adapters never carry modules_to_save here, so the LoRA layers are all there is to switch.
        """
        if name == self._active:
            return
        if name not in self.peft.peft_config:
            raise ValueError(f"no adapter {name!r} on the shared base")
        for layer in self._adapter_layers:
            layer._active_adapter = [name]
        self.peft.active_adapter = self.peft.base_model.active_adapter = name  # as PeftModel.set_adapter sets them
        self._active = name

    @contextlib.contextmanager
    def base_only(self) -> Iterator[None]:
        """Adapters off (the reference, or a reward head on the base), on the LoRA layers alone as
        in use(), and without peft's requires_grad flips."""
        for layer in self._adapter_layers:
            layer._disable_adapters = True
        try:
            yield
        finally:
            for layer in self._adapter_layers:
                layer._disable_adapters = False

    def _check_fast_switch(self) -> None:
        """use() and base_only() set peft's own per-layer state; fail loudly if a peft release renames it."""
        layer = self._adapter_layers[0]
        self.use(POLICY)
        with self.base_only():
            off = layer.disable_adapters
        if layer.active_adapters != [POLICY] or not off or layer.disable_adapters:
            raise AlignError("this peft release keeps a LoRA layer's active adapter elsewhere; "
                             "PolicyStack.use() needs updating")

    def backbone(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states (B, L, H) with the active adapter."""
        inner = self.peft.base_model.model.model
        return inner(input_ids=input_ids, attention_mask=attention_mask,
                     position_ids=position_ids(attention_mask)).last_hidden_state

    def policy_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_last: int,
                      adapter: str = POLICY) -> torch.Tensor:
        """Logits (B, n_last, V) predicting the last n_last tokens (the response)."""
        if adapter == REF and not self.has_ref_adapter:
            with self.base_only():
                # a reward head on the base reads this very pass's hidden states: keep them for rewards()
                return self._logits(input_ids, attention_mask, n_last,
                                    keep_hidden=self.reward_on_base and not torch.is_grad_enabled())
        self.use(adapter)
        return self._logits(input_ids, attention_mask, n_last)

    def _logits(self, input_ids, attention_mask, n_last, keep_hidden=False):
        if keep_hidden:
            # the last hidden states alone: output_hidden_states would hold every layer's until the pass ends
            hidden = self.backbone(input_ids, attention_mask)  # (B, L, H), post-norm
            self._base_pass = (input_ids, attention_mask, hidden)
            return self.peft.base_model.model.lm_head(hidden[:, -n_last - 1:])[:, :-1]  # as the model's forward does
        out = self.peft(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                        logits_to_keep=n_last + 1)
        return out.logits[:, :-1]  # position t predicts token t+1

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_last: int) -> torch.Tensor:
        """V(s_t) (B, n_last) for the states before each of the last n_last tokens."""
        self.use(VALUE)
        hidden = self.backbone(input_ids, attention_mask)[:, -n_last - 1:-1]
        return self.value_head(hidden.float()).squeeze(-1)  # (B, n_last)

    def rewards(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
        """Raw reward r(x, y) (B,) read at each sequence's last real token; an ensemble's is its objective over
        the members' normalised rewards, each member a pass with its own adapter and head."""
        if self.reward_head is None:
            raise AlignError("no reward model on the shared base")
        if self.member_heads:
            rows = torch.arange(input_ids.shape[0], device=input_ids.device)
            scores = []
            for k, (head, normaliser) in enumerate(zip(self.member_heads, self.member_normalisers)):
                self.use(member_adapter(k))
                hidden = self.backbone(input_ids, attention_mask)
                scores.append(normaliser(head(hidden[rows, last_index].float()).squeeze(-1)))
            self.last_members = torch.stack(scores)  # (K, B)
            return combine(self.last_members, self.ensemble_objective, self.uwo_lambda)
        if self.reward_on_base:
            hidden = self._kept_base_pass(input_ids, attention_mask)
            if hidden is None:
                with self.base_only():
                    hidden = self.backbone(input_ids, attention_mask)
        else:
            self.use(REWARD)
            hidden = self.backbone(input_ids, attention_mask)
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]
        return self.reward_head(picked.float()).squeeze(-1)

    def _kept_base_pass(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """The reference pass's hidden states when it read these very tokens (the base is frozen, so they
        are what a second base pass would give): the rollout then runs the base once for the reference
        log-probs and the reward, not twice."""
        kept, self._base_pass = self._base_pass, None
        if (kept is None or kept[0].shape != input_ids.shape or not torch.equal(kept[0], input_ids)
                or not torch.equal(kept[1], attention_mask)):
            return None
        return kept[2]

    def sample(self, query_ids: torch.Tensor, query_mask: torch.Tensor, *, max_new_tokens: int, temperature: float,
               eos_ids: list[int], pad_id: int, top_p: float = 1.0, greedy: bool = False,
               working_copy: bool = False) -> Sampled:
        """Responses of the policy adapter to left-padded queries (B, Q), and log π_T of each token (core.decoding).
        working_copy: on the adapter merged into a copy of the weights (core.sampling_weights), built here
        from the adapter as it is now and freed on return."""
        self.use(POLICY)
        # sampling needs no autograd bookkeeping at all (13% faster than no_grad on the tiny model);
        # clones are normal tensors again, which the update may index and embed under autograd
        with torch.inference_mode(), sampling_weights(self.peft, query_ids.shape[0], enabled=working_copy):
            out = decoding.sample_queries(self.peft, query_ids, query_mask, max_new_tokens=max_new_tokens,
                                          temperature=temperature, eos_ids=eos_ids, pad_id=pad_id, top_p=top_p,
                                          greedy=greedy)
        return Sampled(out.tokens.clone(), out.logprobs.clone())

    @property
    def shares_reward(self) -> bool:
        return self.reward_head is not None

