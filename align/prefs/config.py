"""Configs of the TRL-backed recipes: DPO, KTO and ORPO (preferences), GRPO and RLOO (prompts + a reward)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from align.core.config import check
from align.core.input_paths import InputPath
from align.core.modeling import ModelConfig
from align.core.tracking import TrackingConfig
from align.reward.ensemble import Objective


@dataclass
class RecipeTraining:
    epochs: float = 1.0
    """Passes over the training data (DPO, ORPO: the pairs; KTO: its unpaired rows; GRPO/RLOO: the prompts);
    ignored when max_steps > 0."""
    max_steps: int = -1
    """Stop after this many optimiser steps; -1 = run `epochs`."""
    batch_size: int = 8
    """The global batch, as for SFT and the reward model: each of n processes takes batch_size / n (a batch
    that does not divide is refused). DPO/ORPO: pairs; KTO: rows, at least 2 per process (its KL estimate
    pairs rows within a batch); GRPO/RLOO: completions, so batch_size x grad_accum must divide by
    num_generations."""
    grad_accum: int = 1
    """Forward passes per optimiser step."""
    learning_rate: float = 5e-5
    """AdamW peak learning rate: transformers' default (TRL's DPO, KTO, ORPO, GRPO and RLOO configs default to
    1e-6)."""
    lr_scheduler: Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"] = "linear"
    """Learning-rate schedule after warmup (transformers' scheduler of that name)."""
    warmup_ratio: float = 0.0
    """Share of the optimiser steps spent warming the learning rate up from zero."""
    beta: float = 0.1
    """DPO and KTO: the β of the implicit reward β·log(π/π_ref) (Rafailov et al. 2023: 0.1, TRL's default for
    both). ORPO: λ, the weight of the odds-ratio term beside the SFT loss (Hong et al. 2024, arXiv 2403.07691;
    TRL's 0.1). GRPO/RLOO: the KL coefficient."""
    max_length: int = 512
    """DPO, KTO, ORPO: tokens per prompt + response (TRL's max_length). A longer DPO pair loses its conversation's
    start (as the reward model's), an ORPO one its completions' ends; KTO drops a row whose prompt alone fills
    it, and so does ORPO here (counted: data/too_long_dropped). GRPO and RLOO do not read it: `max_new_tokens`
    caps their completions."""
    max_tokens_per_batch: int = 4096
    """Padded tokens of one forward pass: each process's share of `batch_size` goes through the model in equal
    micro-batches within this budget, their gradients accumulated, so a step still trains on batch_size x
    grad_accum items. An item counts at most: DPO, ORPO 2 x max_length (chosen and rejected go through together);
    KTO max_length (at least 2 rows a pass); GRPO, RLOO its prompt + max_new_tokens (the longest prompt in the
    data). Activations and the LM head grow with it: on SmolLM2-135M NF4 + LoRA on the CPU, 2048 tokens with
    gradient_checkpointing peak at ~3 GB. The stage refuses, before the model loads, a budget its estimate
    says will not fit."""
    gradient_checkpointing: bool = True
    """Recompute activations in backward (TRL's default): ~0.24 MB a token kept instead of ~3.1 MB on
    SmolLM2-135M (fp32), for ~30-50% more time."""
    save_steps: int = 50
    """Checkpoint every this many optimiser steps (the newest two are kept); `--resume` continues from the newest."""
    seed: int = 42
    """Seeds the new adapter's initial weights and TRL's trainer; for DPO, KTO and ORPO also the held-out split
    (and KTO's row order)."""

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "max_length", "max_tokens_per_batch", "save_steps"):
            check(getattr(self, name) > 0, f"training.{name}", f"must be > 0, got {getattr(self, name)}")
        check(self.epochs > 0 or self.max_steps > 0, "training.epochs", "set epochs > 0 or max_steps > 0")
        check(self.max_steps == -1 or self.max_steps > 0, "training.max_steps", f"must be -1 (run epochs) or > 0, got {self.max_steps}")
        check(self.learning_rate > 0, "training.learning_rate", f"must be > 0, got {self.learning_rate}")
        check(0 <= self.warmup_ratio < 1, "training.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check(self.beta >= 0, "training.beta", f"must be >= 0, got {self.beta}")
        check(self.seed >= 0, "training.seed", f"must be >= 0, got {self.seed}")


@dataclass
class DPOData:
    train: InputPath = "data/demo/rankings.jsonl"
    """Preferences, or rankings (each ranking gives all its (better, worse) pairs)."""
    eval: InputPath | None = None
    """Held-out preferences or rankings, evaluated every epoch and at the end; when unset, `eval_fraction`
    of the training pairs."""
    eval_fraction: float = 0.1
    """Share of the training pairs held out when `eval` is unset. Pairs are drawn one by one, so the pairs of
    one ranking can fall on both sides."""

    def __post_init__(self):
        check(0 <= self.eval_fraction < 1, "data.eval_fraction", f"must be in [0, 1), got {self.eval_fraction}")


@dataclass
class DPOConfig:
    out_dir: str = "runs/dpo"
    """The stage output directory (DESIGN.md contract)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """`model.adapter`: start the policy from the SFT adapter (the reference is then that policy, frozen)."""
    data: DPOData = field(default_factory=DPOData)
    """Which preferences train and which are held out."""
    training: RecipeTraining = field(default_factory=RecipeTraining)
    """Optimisation and checkpointing, passed to TRL's DPOTrainer."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """W&B and how often training figures are logged."""


@dataclass
class KTOData:
    train: InputPath = "data/demo/rankings.jsonl"
    """Preferences or rankings, made into KTO's unpaired rows (align.convert.pairs_to_kto): a preference's chosen
    completion desirable and its rejected one undesirable; a ranking's best desirable, its worst undesirable, the
    ones between left out."""
    eval: InputPath | None = None
    """Held-out preferences or rankings, converted the same way; when unset, `eval_fraction` of the training
    prompts."""
    eval_fraction: float = 0.1
    """Share of the training prompts held out when `eval` is unset. A prompt is held out whole, so its desirable
    and undesirable rows fall on the same side."""

    def __post_init__(self):
        check(0 <= self.eval_fraction < 1, "data.eval_fraction", f"must be in [0, 1), got {self.eval_fraction}")


@dataclass
class KTOTraining(RecipeTraining):
    desirable_weight: float = 1.0
    """λ_D, the weight of the desirable rows' loss. KTO's paper (Ethayarajh et al. 2024, Eq. 8) asks for
    λ_D·n_D / (λ_U·n_U) in [1, 4/3], n_D and n_U the counts of desirable and undesirable rows. Preferences give
    one of each, so 1 and 1 fit. Raise this one, to between n_U/n_D and 4/3 of that, when desirable rows are the
    fewer (data where only some prompts have a good answer). TRL logs the range at start when the ratio is out."""
    undesirable_weight: float = 1.0
    """λ_U, the weight of the undesirable rows' loss. Raise it, to between n_D/n_U·3/4 and n_D/n_U, when the
    desirable rows outnumber the undesirable by more than 4/3 (rankings with ties at the top give several
    desirable rows each). Change one of the two weights, not both."""

    def __post_init__(self):
        super().__post_init__()
        # TRL refuses 1 too, in words about its implementation: ours names the setting
        check(self.batch_size >= 2, "training.batch_size", f"KTO needs >= 2, got {self.batch_size}: its KL term is "
              "estimated from the other rows' completions in the batch, and alone a row has none")
        for name in ("desirable_weight", "undesirable_weight"):
            check(getattr(self, name) > 0, f"training.{name}", f"must be > 0, got {getattr(self, name)}")


@dataclass
class KTOConfig:
    """KTO (Ethayarajh et al. 2024, arXiv 2402.01306): each completion labelled good or bad, not paired."""

    out_dir: str = "runs/kto"
    """The stage output directory (DESIGN.md contract)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """`model.adapter`: start the policy from the SFT adapter (the reference is then that policy, frozen)."""
    data: KTOData = field(default_factory=KTOData)
    """Which preferences or rankings train and which are held out."""
    training: KTOTraining = field(default_factory=KTOTraining)
    """Optimisation, the two rows' weights and checkpointing, passed to TRL's KTOTrainer."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """W&B and how often training figures are logged."""


@dataclass
class ORPOConfig:
    """ORPO (Hong et al. 2024, arXiv 2403.07691): the SFT loss on the chosen completion plus λ times an
    odds-ratio loss that favours it over the rejected one; no reference model."""

    out_dir: str = "runs/orpo"
    """The stage output directory (DESIGN.md contract)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """`model.adapter`: start the policy from the SFT adapter. The paper starts from the base model instead, its
    SFT term standing in for the SFT stage: `model.adapter=null` does that."""
    data: DPOData = field(default_factory=DPOData)
    """Which preferences train and which are held out, as DPO's."""
    training: RecipeTraining = field(default_factory=RecipeTraining)
    """Optimisation and checkpointing, passed to TRL's ORPOTrainer (trl.experimental); `beta` is ORPO's λ."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """W&B and how often training figures are logged."""


@dataclass
class OnlineReward:
    model: str | None = "runs/reward"
    """A reward stage directory; its normalised reward scores each completion."""
    function: str | None = None
    """Or a Python `module:function(prompt, response) -> float`."""
    ensemble_objective: Objective = "mean"
    """With a reward-model ensemble: how its members' normalised scores make one reward (`mean`, `uwo`: the
    mean minus uwo_lambda x their std, `wco`: the lowest), as PPO's."""
    uwo_lambda: float = 1.0
    """With ensemble_objective `uwo`: the weight of the members' disagreement."""

    def __post_init__(self):
        check(self.model is not None or self.function is not None, "reward", "set reward.model or reward.function")
        check(self.uwo_lambda >= 0, "reward.uwo_lambda", f"must be >= 0, got {self.uwo_lambda}")


@dataclass
class OnlineData:
    prompts: InputPath = "data/demo/prompts.jsonl"
    """Prompts to sample completions for ({"prompt"} or {"messages"})."""


@dataclass
class OnlineGeneration:
    num_generations: int = 4
    """Completions per prompt: GRPO's group, RLOO's k (the leave-one-out baseline needs >= 2)."""
    max_new_tokens: int = 32
    """Completion length cap in tokens (TRL's max_completion_length)."""
    temperature: float = 0.7
    """Sampling temperature of the completions (as PPO's, after the N+ details; TRL's default is 1.0)."""

    def __post_init__(self):
        check(self.num_generations >= 2, "generation.num_generations", "needs >= 2 for a group baseline")
        check(self.max_new_tokens > 0, "generation.max_new_tokens", f"must be > 0, got {self.max_new_tokens}")
        check(self.temperature > 0, "generation.temperature", f"must be > 0, got {self.temperature}")


@dataclass
class OnlineTraining(RecipeTraining):
    beta: float = 0.05
    """KL coefficient towards the reference: 0.05 as TRL's RLOOConfig (TRL's GRPOConfig defaults to 0, no
    reference model)."""


@dataclass
class OnlineConfig:
    """GRPO (Shao et al. 2024) and RLOO (Ahmadian et al. 2024) share this shape."""

    out_dir: str = "runs/grpo"
    """The stage output directory (DESIGN.md contract)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """`model.adapter`: start the policy from the SFT adapter."""
    reward: OnlineReward = field(default_factory=OnlineReward)
    """What scores each completion: a reward model (normalised) or a rule function."""
    data: OnlineData = field(default_factory=OnlineData)
    """The prompts to train on."""
    generation: OnlineGeneration = field(default_factory=OnlineGeneration)
    """How the completions are sampled."""
    training: OnlineTraining = field(default_factory=OnlineTraining)
    """Optimisation and checkpointing, passed to TRL's GRPOTrainer or RLOOTrainer."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """W&B and how often training figures are logged."""

    # what this stage called otherwise before the one vocabulary of every stage (accepted with a notice)
    RENAMED = {f"training.{name}": f"generation.{name}" for name in ("num_generations", "max_new_tokens", "temperature")}


@dataclass
class RLOOConfig(OnlineConfig):
    """RLOO: GRPO's settings, in its own default directory."""

    out_dir: str = "runs/rloo"
    """The stage output directory (DESIGN.md contract)."""
