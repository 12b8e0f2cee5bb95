"""Loading the base model: on the right device and dtype, in 4-bit NF4 (bitsandbytes) when asked.

A 4-bit base on a CPU needs two fixes bitsandbytes does not make: its weights must keep their
trainable layout (keep_4bit_layout_trainable), and the full-precision checkpoint it was read from must
be let go (release_checkpoint_pages).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from align.core import heap
from align.core.errors import AlignError
from align.core.model_config import ModelConfig
from align.core.model_paths import first_line, resolve_model_path

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def device() -> "torch.device":
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_is_fast() -> bool:
    """bf16 only where the hardware runs it natively: on CPUs here it is ~17x slower than fp32."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def compute_dtype(config: ModelConfig) -> "torch.dtype":
    import torch

    if config.dtype != "auto":
        return getattr(torch, config.dtype)
    return torch.bfloat16 if bf16_is_fast() else torch.float32


def quantization_config(config: ModelConfig, skip_modules: list[str] | None = None) -> Any:
    if config.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=config.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(config),
        llm_int8_skip_modules=skip_modules,
    )


def load_base(
    config: ModelConfig,
    tokenizer: "PreTrainedTokenizerBase",
    *,
    head: Literal["causal_lm", "score"] = "causal_lm",
) -> "PreTrainedModel":
    """The base model on the right device and dtype, 4-bit if asked, pad ids set."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    path = resolve_model_path(config.name)
    dtype = compute_dtype(config) if config.tuning != "full" else torch.float32
    # safetensors only: a pickled .bin runs code on load
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": config.trust_remote_code, "use_safetensors": True}
    quant = quantization_config(config, skip_modules=["score"] if head == "score" else None)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    cls = AutoModelForCausalLM if head == "causal_lm" else AutoModelForSequenceClassification
    if head == "score":
        kwargs["num_labels"] = 1
    try:
        model = cls.from_pretrained(path, **kwargs)
    except OSError as e:
        raise AlignError(f"cannot load model {config.name!r}: {first_line(e)}") from None
    if quant is not None:
        keep_4bit_layout_trainable(model)
        if not torch.cuda.is_available():
            release_checkpoint_pages(model)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    explicit_generation(model, tokenizer)
    return model


def explicit_generation(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase") -> None:
    """The model's generation_config keeps its token ids and nothing else. transformers fills every setting a
    generate call leaves unset from it, so a checkpoint's own repetition_penalty, no_repeat_ngram_size or
    top_k would reshape what align samples: PPO's log-probs (the raw logits over the temperature) would then
    not be the sampling distribution's, and the evaluation would score another sampler than the one named.
    Each call passes its own temperature, top_p and top_k."""
    from transformers import GenerationConfig

    own = getattr(model, "generation_config", None)
    if own is None:
        return
    model.generation_config = GenerationConfig(bos_token_id=own.bos_token_id, eos_token_id=own.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)


def keep_4bit_layout_trainable(model: "PreTrainedModel") -> None:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference.

    On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a Linear4bit's weights the first time it
    runs in eval mode without grad, for good; its later forwards then take `gemv_4bit`, which has
    no autograd, and gradients through the frozen base vanish silently. RLHF alternates no-grad
    generation with training, so the repacking must never happen.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def release_checkpoint_pages(model: "PreTrainedModel") -> None:
    """Let a 4-bit model on the CPU stop holding its full-precision checkpoint in memory.

    Loading maps the safetensors file and reads all of it to quantise; the parameters left in full
    precision (embeddings, norms) stay views of that mapping, so every page read stays resident: on
    SmolLM2-135M, 405-513 MB of fp32 weights the 4-bit model no longer uses. Copying those
    parameters out lets the mapping go, and the heap's freed quantisation buffers go back to the
    OS (malloc_trim, glibc only): 1028 -> 571 MB after the load, measured 2026-12-02.
    """
    for param in model.parameters():  # unique: a tied LM head is the embedding's own Parameter
        if not hasattr(param, "quant_state"):
            param.data = param.data.clone()
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = buffer.clone()
    heap.release()
