"""Models for the stages, one import: `from align.core import modeling`.

Each concern lives in a module of its own; this one re-exports the names the stages use.

    model_config   ModelConfig, LoraSettings, PromptTuningSettings (torch-free: every stage config imports it)
    model_paths    the embedded default (GGUF converted once to safetensors), the tiny model, local dirs, hub ids
    tokenizer      load_tokenizer with a pad token distinct from EOS
    base_model     load_base: device, dtype, 4-bit NF4 (QLoRA), the CPU fixes a 4-bit base needs
    tuning         attach_tuning (LoRA, prompt tuning, head, full) and the pieces PPO shares: lora_config,
                   for_task, prepare_for_training, cast_to_fp32
    saved_models   save_loadable and the base record (`align_base.json`) beside an adapter
    model_checks   check_model: the model and adapter are there, safetensors only, no shipped code unasked
"""

from __future__ import annotations

from align.core.base_model import bf16_is_fast, compute_dtype, device, load_base, quantization_config
from align.core.model_checks import check_adapter_dir, check_model, check_no_custom_code
from align.core.model_config import LoraSettings, ModelConfig, PromptTuningSettings
from align.core.model_paths import ALIASES, DEFAULT_MODEL, EMBEDDED, cache_root, embedded_gguf, first_line, resolve_model_path
from align.core.saved_models import BASE_FILE, recorded_base, save_base_record, save_loadable
from align.core.tokenizer import PAD_CANDIDATES, fix_pad_token, load_tokenizer
from align.core.tuning import (
    NON_REENTRANT,
    attach_tuning,
    cast_to_fp32,
    cast_trainable_to_fp32,
    count_parameters,
    for_task,
    load_adapter,
    lora_config,
    prepare_for_training,
    undo_trl_bf16_adapters,
)

__all__ = [
    "ALIASES", "BASE_FILE", "DEFAULT_MODEL", "EMBEDDED", "NON_REENTRANT", "PAD_CANDIDATES",
    "LoraSettings", "ModelConfig", "PromptTuningSettings",
    "attach_tuning", "bf16_is_fast", "cache_root", "cast_to_fp32", "cast_trainable_to_fp32", "check_adapter_dir",
    "check_model", "check_no_custom_code", "compute_dtype", "count_parameters", "device", "embedded_gguf",
    "first_line", "fix_pad_token", "for_task", "load_adapter", "load_base", "load_tokenizer", "lora_config",
    "prepare_for_training", "quantization_config", "recorded_base", "resolve_model_path", "save_base_record",
    "save_loadable", "undo_trl_bf16_adapters",
]
