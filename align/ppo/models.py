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

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from align.core import modeling
from align.core.errors import AlignError
from reward.score import HEAD_FILE, RewardModel, weights_dir

POLICY, VALUE, REWARD, REF = "policy", "value", "reward", "ref"
TRAINABLE = (POLICY, VALUE)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only: left padding must not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def lora_weights(adapter_dir: Path) -> tuple[Any, dict[str, torch.Tensor], torch.Tensor | None]:
    """(LoraConfig, LoRA tensors, score-head weight or None) of a saved adapter."""
    from peft import LoraConfig
    from safetensors.torch import load_file

    config = LoraConfig.from_pretrained(str(adapter_dir))
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    head = next((v for k, v in tensors.items() if k.endswith("score.weight")), None)
    return config, {k: v for k, v in tensors.items() if "score" not in k}, head


class PolicyStack(nn.Module):
    """The shared base with its adapters and heads; `use(name)` selects what runs."""

    def __init__(self, model_config: modeling.ModelConfig, tokenizer: Any, reward_path: str | None):
        super().__init__()
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

        base = modeling.load_base(model_config, tokenizer)
        if model_config.quantization != "none":
            from peft import prepare_model_for_kbit_training

            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
        hidden = base.config.hidden_size
        sft = Path(model_config.adapter) if model_config.adapter else None
        lora = model_config.lora
        if sft is not None:
            policy_config, policy_weights, _ = lora_weights(sft)
        else:
            policy_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0,
                                       target_modules="all-linear" if lora.target_modules == ["all-linear"] else lora.target_modules)
            policy_weights = None
        policy_config.task_type, policy_config.inference_mode = "CAUSAL_LM", False
        policy_config.lora_dropout = 0.0  # N+ details: dropout off, or log-prob ratios start away from 1
        self.peft = get_peft_model(base, policy_config, adapter_name=POLICY)
        if policy_weights is not None:
            set_peft_model_state_dict(self.peft, policy_weights, adapter_name=POLICY)
            self.peft.add_adapter(REF, policy_config)
            set_peft_model_state_dict(self.peft, policy_weights, adapter_name=REF)
        self.has_ref_adapter = policy_weights is not None

        self.reward_on_base = False
        reward_config = reward_weights = reward_head = None
        if reward_path is not None:
            directory = weights_dir(reward_path)
            base_record = json.loads((directory / modeling.BASE_FILE).read_text())
            same_base = base_record["path"] == modeling.resolve_model_path(model_config.name)
            if same_base and (directory / "adapter_config.json").exists():
                reward_config, reward_weights, reward_head = lora_weights(directory)
            elif same_base and (directory / HEAD_FILE).exists():
                from safetensors.torch import load_file

                reward_head = load_file(directory / HEAD_FILE)["weight"]
                self.reward_on_base = True
        self.reward_head = self.value_head = None
        if reward_head is not None:
            self.reward_head = nn.Linear(hidden, 1, bias=False)
            self.reward_head.weight.data.copy_(reward_head.float())
            self.reward_head.requires_grad_(False)
        if reward_config is not None:
            reward_config.task_type, reward_config.inference_mode, reward_config.modules_to_save = "CAUSAL_LM", False, None
            reward_config.lora_dropout = 0.0
            self.peft.add_adapter(REWARD, reward_config)
            set_peft_model_state_dict(self.peft, reward_weights, adapter_name=REWARD)
            self.peft.add_adapter(VALUE, reward_config)
            set_peft_model_state_dict(self.peft, reward_weights, adapter_name=VALUE)
        else:
            self.peft.add_adapter(VALUE, policy_config)
        self.value_head = nn.Linear(hidden, 1, bias=False)
        if self.reward_head is not None:
            self.value_head.weight.data.copy_(self.reward_head.weight.data)
        else:
            nn.init.zeros_(self.value_head.weight)
        self.has_reward_adapter = reward_config is not None
        self._params = {name: [p for n, p in self.peft.named_parameters() if f".{name}." in n]
                        for name in (POLICY, VALUE, REWARD, REF)}
        device = next(self.peft.parameters()).device
        self.value_head.to(device)
        if self.reward_head is not None:
            self.reward_head.to(device)
        for name in TRAINABLE:
            for p in self._params[name]:
                p.data = p.data.float()
        self.use(POLICY)

    @property
    def device(self) -> torch.device:
        return next(self.peft.parameters()).device

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self._params[POLICY] + self._params[VALUE] + list(self.value_head.parameters())

    def use(self, name: str) -> None:
        """Activate one adapter; peft's set_adapter flips requires_grad, so restore ours."""
        self.peft.set_adapter(name)
        for adapter, params in self._params.items():
            for p in params:
                p.requires_grad_(adapter in TRAINABLE)

    def backbone(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states (B, L, H) with the active adapter."""
        inner = self.peft.base_model.model.model
        return inner(input_ids=input_ids, attention_mask=attention_mask,
                     position_ids=position_ids(attention_mask)).last_hidden_state

    def policy_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_last: int,
                      adapter: str = POLICY) -> torch.Tensor:
        """Logits (B, n_last, V) predicting the last n_last tokens (the response)."""
        if adapter == REF and not self.has_ref_adapter:
            with self.peft.disable_adapter():
                return self._logits(input_ids, attention_mask, n_last)
        self.use(adapter)
        return self._logits(input_ids, attention_mask, n_last)

    def _logits(self, input_ids, attention_mask, n_last):
        out = self.peft(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                        logits_to_keep=n_last + 1)
        return out.logits[:, :-1]  # position t predicts token t+1

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_last: int) -> torch.Tensor:
        """V(s_t) (B, n_last) for the states before each of the last n_last tokens."""
        self.use(VALUE)
        hidden = self.backbone(input_ids, attention_mask)[:, -n_last - 1:-1]
        return self.value_head(hidden.float()).squeeze(-1)

    def rewards(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
        """Raw reward r(x, y) (B,) read at each sequence's last real token."""
        if self.reward_head is None:
            raise AlignError("no reward model on the shared base")
        if self.reward_on_base:
            with self.peft.disable_adapter():
                hidden = self.backbone(input_ids, attention_mask)
        else:
            self.use(REWARD)
            hidden = self.backbone(input_ids, attention_mask)
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]
        return self.reward_head(picked.float()).squeeze(-1)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.use(POLICY)
        return self.peft.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @property
    def shares_reward(self) -> bool:
        return self.reward_head is not None


def separate_reward_model(reward_path: str) -> RewardModel:
    return RewardModel.load(reward_path)
