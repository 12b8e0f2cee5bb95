"""What trains on a loaded base: LoRA adapters (new or saved), a soft prompt, the head alone, or all.

The pieces every stage builds the same way live here once, for attach_tuning and for PPO's shared
base (align.ppo.models) alike: the LoraConfig from our LoRA settings (lora_config, for_task), the
preparation of a base for training (prepare_for_training: QLoRA's for a 4-bit base, gradient
checkpointing), and fp32 trainable weights (cast_to_fp32).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal

from align.core.base_model import bf16_is_fast
from align.core.errors import AlignError
from align.core.model_checks import check_adapter_dir
from align.core.model_config import LoraSettings, ModelConfig, PromptTuningSettings
from align.core.model_paths import first_line

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from transformers import PreTrainedModel

TaskType = Literal["CAUSAL_LM", "SEQ_CLS"]

# the non-reentrant form: gradients reach adapters behind a frozen embedding without
# enable_input_require_grads, and checkpointed passes may run under no_grad too
NON_REENTRANT = {"use_reentrant": False}


# ---------------------------------------------------------------- built once, used by every stage


def prepare_for_training(model: "PreTrainedModel", config: ModelConfig, *,
                         gradient_checkpointing: bool = False) -> "PreTrainedModel":
    """A loaded base made ready for adapters to train on it. A 4-bit base gets QLoRA's preparation (peft's
    prepare_model_for_kbit_training: base frozen, its bf16/fp16 weights cast to fp32, inputs' gradients on);
    gradient checkpointing, when asked, in its non-reentrant form."""
    if config.quantization != "none":
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                               gradient_checkpointing_kwargs=NON_REENTRANT)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(NON_REENTRANT)
    return model


def lora_config(settings: LoraSettings, task_type: TaskType, *, dropout: float | None = None) -> "LoraConfig":
    """A new adapter's LoraConfig from our settings (with `dropout`, that dropout instead of theirs)."""
    from peft import LoraConfig

    targets = settings.target_modules
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout if dropout is None else dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,  # peft's keyword is a string
        task_type=task_type,
        modules_to_save=new_head(task_type),
    )


def for_task(config: "LoraConfig", task_type: TaskType, *, dropout: float | None = None) -> "LoraConfig":
    """A LoraConfig read from a saved adapter, set to train under `task_type` (with `dropout`, that dropout)."""
    config.task_type, config.inference_mode = task_type, False
    if dropout is not None:
        config.lora_dropout = dropout
    return config


def new_head(task_type: TaskType) -> list[str] | None:
    """The modules that train in full beside the adapters: a reward model's scalar head is new."""
    return ["score"] if task_type == "SEQ_CLS" else None


def cast_to_fp32(params: Iterable["torch.nn.Parameter"]) -> None:
    """Keep these weights in fp32, the Parameter objects kept (only `.data` is replaced)."""
    import torch

    for param in params:
        if param.dtype != torch.float32:
            param.data = param.data.float()


def cast_trainable_to_fp32(model: Any) -> None:
    """On CPU (and with a 4-bit base) keep trainable weights in fp32: bf16 adapters crash or crawl there."""
    cast_to_fp32(p for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- a stage's trainable part


def attach_tuning(
    model: "PreTrainedModel",
    config: ModelConfig,
    *,
    task_type: TaskType = "CAUSAL_LM",
    gradient_checkpointing: bool = False,
) -> "PreTrainedModel":
    """Make the trainable part: a new or loaded adapter, a soft prompt, the head alone, or all."""
    model = prepare_for_training(model, config, gradient_checkpointing=gradient_checkpointing)
    if config.tuning == "full":
        return model
    if config.tuning == "head":
        for name, param in model.named_parameters():
            param.requires_grad = name.split(".")[0] == "score"
        cast_trainable_to_fp32(model)
        return model
    if config.adapter:  # its own LoRA settings hold (model_checks.check_adapter_lora refused others)
        model = saved_adapter(model, config.adapter, task_type)
    elif config.tuning == "lora":
        model = new_lora(model, config.lora, task_type)
    else:
        model = new_soft_prompt(model, config.prompt_tuning, task_type)
    if config.quantization != "none" or not bf16_is_fast():
        cast_trainable_to_fp32(model)
    return model


def new_lora(model: "PreTrainedModel", settings: LoraSettings, task_type: TaskType) -> Any:
    from peft import get_peft_model

    try:
        return get_peft_model(model, lora_config(settings, task_type))
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        raise AlignError(f"model.lora.target_modules {settings.target_modules}: {first_line(e)}") from None


def new_soft_prompt(model: "PreTrainedModel", settings: PromptTuningSettings, task_type: TaskType) -> Any:
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    return get_peft_model(
        model,
        PromptTuningConfig(
            task_type=task_type,
            num_virtual_tokens=settings.num_virtual_tokens,
            # not RANDOM: N(0, 1) vectors lie far from every token's embedding (Lester et al. 2021, section 3.2)
            prompt_tuning_init=PromptTuningInit.TEXT if settings.init_text else PromptTuningInit.SAMPLE_VOCAB,
            prompt_tuning_init_text=settings.init_text,
            tokenizer_name_or_path=model.config._name_or_path if settings.init_text else None,
        ),
    )


def saved_adapter(model: "PreTrainedModel", adapter_dir: str, task_type: TaskType) -> Any:
    """A saved adapter, trainable: as it is when made for `task_type`, else under a new head."""
    config_file = Path(adapter_dir) / "adapter_config.json"
    made_for = json.loads(config_file.read_text()).get("task_type") if config_file.exists() else task_type
    if made_for == task_type:
        return load_adapter(model, adapter_dir, trainable=True)
    return start_from_other_head(model, adapter_dir, task_type)


def start_from_other_head(model: "PreTrainedModel", adapter_dir: str, task_type: TaskType) -> Any:
    """A reward model starting from the SFT adapter (InstructGPT starts its RM from the SFT model):
    the SFT LoRA weights go onto the backbone; the new scalar head trains in full."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(adapter_dir)
    check_adapter_dir(path)
    lora = LoraConfig.from_pretrained(str(path))
    if lora.peft_type.value != "LORA":
        raise AlignError(f"{path}: only a LoRA adapter can start a model with another head ({lora.peft_type.value} given)")
    lora = for_task(lora, task_type)
    lora.modules_to_save = new_head(task_type)
    model = get_peft_model(model, lora)
    weights = load_file(path / "adapter_model.safetensors")
    # the new head is not in the SFT adapter: keep its fresh initialisation
    fresh = {k: v for k, v in get_peft_model_state_dict(model).items() if k not in weights}
    result = set_peft_model_state_dict(model, {**fresh, **weights})
    if result.unexpected_keys:
        raise AlignError(f"adapter {path} does not fit base {model.config._name_or_path!r}: "
                         f"unexpected weights {result.unexpected_keys[:3]}")
    return model


def load_adapter(model: "PreTrainedModel", adapter_dir: str, *, trainable: bool, name: str = "default") -> Any:
    """Load a saved adapter onto `model`, with a clear error when it was made for another base."""
    from peft import PeftModel

    path = Path(adapter_dir)
    check_adapter_dir(path)
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=name, is_trainable=trainable)
            return model
        return PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=trainable)
    except (RuntimeError, ValueError, KeyError) as e:
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        raise AlignError(
            f"adapter {path} does not fit base {model.config._name_or_path!r} (it was made for {base!r}): {first_line(e)}"
        ) from None


def undo_trl_bf16_adapters(model: Any) -> None:
    """Call after building a TRL trainer. TRL's SFT, DPO, GRPO and RLOO trainers cast the adapters of a
    4-bit base to bf16 (the QLoRA paper's choice on GPUs). Where bf16 is not fast, every LoRA matmul
    then runs in bf16 with casts around it: the demo's SFT step took 17 s instead of 11 on a 2-core CPU."""
    if not bf16_is_fast():
        cast_trainable_to_fp32(model)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total); 4-bit weights count as the parameters they stand for, not their bytes."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total
