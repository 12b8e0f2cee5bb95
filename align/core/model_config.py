"""ModelConfig: which base model a stage loads, at which precision, and what of it trains.

Torch-free: every stage's config imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from align.core.config import check
from align.core.model_paths import DEFAULT_MODEL


@dataclass
class LoraSettings:
    """LoRA (Hu et al. 2021): a trainable low-rank update B·A beside each frozen weight matrix."""

    r: int = 16
    """Rank of the update, the size of A and B's shared dimension; 4-64 covers most uses. The QLoRA paper
    (Dettmers et al. 2023) uses 64 on every linear layer and finds the rank matters little once all
    linear layers are adapted; 16 is the middle of that range at a quarter of the memory."""
    alpha: int = 32
    """Scaling numerator: the update is added as (alpha / r)·B·A. 32 = twice the default rank, a common
    choice; change r and alpha together to keep the update's scale."""
    dropout: float = 0.05
    """Dropout on the LoRA input, in [0, 1). QLoRA: 0.1 for models up to 13B, 0.05 for 33B and 65B.
    PPO turns it off whatever is set here (N+ details: dropout moves the ratio away from 1)."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names to adapt, as the model names them (`q_proj`, `v_proj`, ...), or `["all-linear"]`: every
    attention and MLP projection, not the LM head. The LoRA paper adapted q and v only; QLoRA found all
    linear layers are needed to match full fine-tuning."""

    def __post_init__(self):
        check(self.r >= 1, "lora.r", f"must be >= 1, got {self.r}")
        check(self.alpha >= 1, "lora.alpha", f"must be >= 1, got {self.alpha}")
        check(0 <= self.dropout < 1, "lora.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class PromptTuningSettings:
    """Prompt tuning (Lester et al. 2021): trainable embeddings prepended to every input, the model frozen."""

    num_virtual_tokens: int = 20
    """Soft prompt length in tokens; 20-100 is the usual range (Lester et al. 2021: gains flatten past 20)."""
    init_text: str | None = None
    """Initialise the soft prompt from this text's token embeddings; unset: from the embeddings of tokens drawn
    from the vocabulary (peft's SAMPLE_VOCAB), not N(0, 1) vectors. Lester et al. found real-token
    initialisations beat random ones, most on small models."""
    learning_rate: float = 3e-2
    """AdamW peak learning rate of the soft prompt (in place of training.learning_rate, which is LoRA's): a few
    input vectors need rates two orders above LoRA's. peft's prompt-tuning example trains at 3e-2 with AdamW;
    Lester et al. 2021 at 0.3 with Adafactor."""

    def __post_init__(self):
        check(self.num_virtual_tokens >= 1, "prompt_tuning.num_virtual_tokens", "must be >= 1")
        check(self.learning_rate > 0, "prompt_tuning.learning_rate", f"must be > 0, got {self.learning_rate}")


@dataclass
class ModelConfig:
    """The base model and what trains on it (LoRA on a 4-bit base by default: QLoRA)."""

    name: str = DEFAULT_MODEL
    """Base model: `smollm2-135m-instruct` (embedded), `tiny-random-llama` (tests and the tiny preset), a
    local directory, or a hub id you have cached."""
    adapter: str | None = None
    """Start from this adapter directory (e.g. the SFT stage's `adapter/`) instead of a fresh one. A reward
    model may start from a causal-LM adapter: its LoRA weights, with a new head (InstructGPT starts its
    reward model from the SFT model)."""
    tuning: Literal["lora", "prompt_tuning", "full", "head"] = "lora"
    """What trains: LoRA adapters, a soft prompt, every weight, or (reward models) only the head. PPO
    trains LoRA only (its models are adapters on one shared base)."""
    quantization: Literal["nf4", "none"] = "nf4"
    """`nf4`: the frozen base in 4-bit NormalFloat via bitsandbytes (QLoRA); `none`: the base at `dtype`.
    `full` tuning needs `none`: 4-bit weights cannot be updated."""
    double_quant: bool = True
    """With `nf4`: quantise the quantisation constants too (QLoRA's double quantisation), about 0.37 bits
    per parameter saved, some 3 GB on a 65B model."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and compute dtype (the 4-bit matmuls' too); `auto` = bf16 on GPUs that have it, float32
    elsewhere (bf16 on a CPU is far slower). Trainable weights are kept in float32 on a 4-bit base or
    where bf16 is slow; `full` tuning loads float32 whatever is set."""
    trust_remote_code: bool = False
    """Allow a model directory's own Python code to run. Off unless you trust the files."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """The LoRA adapters' shape, with `tuning: lora`; an `adapter` given brings its own."""
    prompt_tuning: PromptTuningSettings = field(default_factory=PromptTuningSettings)
    """The soft prompt, with `tuning: prompt_tuning`."""

    def __post_init__(self):
        check(
            not (self.tuning == "full" and self.quantization != "none"),
            "model.quantization",
            "full fine-tuning cannot update 4-bit weights; set model.quantization=none or model.tuning=lora",
        )
