"""PPOConfig: stage 3's knobs. Defaults follow the N+ implementation details (Huang et al. 2024,
1B recipe) where they are about the algorithm, and a small CPU-friendly run where about size."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from align.core.config import check
from align.core.input_paths import InputPath
from align.core.modeling import ModelConfig
from align.core.tracking import TrackingConfig
from align.reward.ensemble import Objective


@dataclass
class PPOData:
    prompts: InputPath = "data/demo/prompts.jsonl"
    """Prompts to roll out on ({"prompt"} or {"messages"})."""
    eval_prompts: InputPath | None = "data/demo/heldout.jsonl"
    """Held-out prompts for the in-loop greedy evaluation; unset = none."""
    eval_size: int = 16
    """How many held-out prompts the in-loop evaluation answers."""
    eval_samples: int = 4
    """Sampled answers per held-out prompt (at the training temperature) besides the greedy one: the
    sampled mean reward is what PPO optimises, and moves before the greedy answers do."""
    max_prompt_length: int = 256
    """Prompts longer than this (in tokens) keep their end."""
    eval_judge: str | None = None
    """A gold judge of the in-loop evaluation's greedy answers, a Python `module:function(prompt, response)
    -> float` (the demo's: `align.demo.tasks:judge`), logged as eval/judge_mean beside the proxy reward and
    the KL: the over-optimisation curve (Gao et al. 2022). Unset = none."""

    def __post_init__(self):
        check(self.eval_size > 0, "data.eval_size", f"must be > 0, got {self.eval_size}")
        check(self.eval_samples >= 0, "data.eval_samples", f"must be >= 0, got {self.eval_samples}")
        check(self.max_prompt_length > 0, "data.max_prompt_length", f"must be > 0, got {self.max_prompt_length}")


@dataclass
class RewardSettings:
    model: str | None = "runs/reward"
    """The reward stage directory (`align reward` output)."""
    function: str | None = None
    """Instead of a reward model: a Python `module:function(prompt, response) -> float` (rule-based reward)."""
    no_eos_penalty: float | None = -1.0
    """Score given to a response with no EOS within max_new_tokens (N+ details: -1); unset = no penalty."""
    normalise: bool = True
    """Use the reward model's saved mean/std to normalise scores (an ensemble's members are always
    normalised, each by its own, before they are combined)."""
    length_penalty: float = 0.0
    """Subtracted from each response's score per token (EOS included), in the score's units: a guard against a
    reward model that pays for length (the reward stage reports its length slope, normaliser/length_slope;
    `align eval` draws reward against length). 0 = off. A response without EOS gets no_eos_penalty instead."""
    ensemble_objective: Objective = "mean"
    """How the members of a reward-model ensemble (`align reward` with training.ensemble > 1) make one reward
    from their normalised scores: `mean`; `uwo`, the mean minus uwo_lambda x their standard deviation (less
    reward where they disagree); `wco`, the lowest. Unused with one reward model."""
    uwo_lambda: float = 1.0
    """With ensemble_objective `uwo`: the weight of the members' disagreement (their std)."""

    def __post_init__(self):
        check(self.uwo_lambda >= 0, "reward.uwo_lambda", f"must be >= 0, got {self.uwo_lambda}")
        check(self.length_penalty >= 0, "reward.length_penalty", f"must be >= 0 (0 = off), got {self.length_penalty}")


@dataclass
class SamplingSettings:
    max_new_tokens: int = 32
    """Response length cap in tokens; a response that reaches it without EOS gets `reward.no_eos_penalty`."""
    temperature: float = 0.7
    """Sampling temperature, also applied in every log-prob pass (N+ details: 0.7)."""
    top_p: float = 1.0
    """Nucleus sampling of the rollouts. Log-probs stay under the whole tempered distribution (as TRL's PPO),
    so below 1 they are not those of the sampler; 1 as in the N+ recipe."""
    logprobs_from_sampling: bool = True
    """log π_old from the sampling pass's own logits (TRL's PPO): one forward pass of the policy fewer per
    rollout. They differ from a separate pass only by float rounding (KV-cache steps against one pass), so
    the first ratio is 1 up to that rounding; false runs the separate pass and makes it exactly 1."""
    working_copy: bool = True
    """Sample on a working copy of the linear weights with the policy adapter merged in, on the CPU packed for
    few-row products (core/sampling_weights.py): SmolLM2-135M sampled 1.2-1.4x faster at batch 4-8 and 1.1x at 16-32
    on one CPU thread, for a copy of the unquantised weights (0.54 GB) held while sampling. False samples through
    the adapters as trained."""

    def __post_init__(self):
        check(self.max_new_tokens > 0, "generation.max_new_tokens", "must be > 0")
        check(self.temperature > 0, "generation.temperature", "must be > 0 (log-probs divide by it)")
        check(0 < self.top_p <= 1, "generation.top_p", "must be in (0, 1]")


@dataclass
class PPOSettings:
    updates: int = 20
    """PPO updates (rollout + optimisation) to run."""
    batch_size: int = 8
    """Prompts per rollout, over all processes: each of n rolls out batch_size / n."""
    mini_batch_size: int = 4
    """Responses per optimiser step inside an update, over all processes (each of n takes 1/n). The N+
    recipe takes one mini-batch per epoch (mini_batch_size = batch_size); the default here takes two."""
    grad_accum: int = 1
    """At least this many micro-batches per mini-batch and process (memory, not maths): a micro-batch
    holds at most mini_batch_size / processes / grad_accum rows, which must divide; max_tokens_per_batch
    may cut it further."""
    max_tokens_per_batch: int = 1024
    """Padded tokens per micro-batch, in every pass over the rollout: the update's forward + backward, and
    the no-grad passes (log π_old, log π_ref, values, the reward). A micro-batch's padded tokens are its
    rows x its longest prompt + its longest response; rows are sorted by length and cut where one more
    would pass the budget, so one 900-token conversation pads only its few long neighbours. A row longer
    than the budget goes alone (up to data.max_prompt_length + generation.max_new_tokens). The loss is a token
    mean over the whole mini-batch, so the budget changes memory, never the update. Activations grow with
    it: SmolLM2-135M NF4 + LoRA on the CPU kept ~2.1 MB a padded token, 0.16 MB with gradient_checkpointing.
    The stage refuses a budget its estimate says will not fit (align/ppo/memory.py)."""
    ppo_epochs: int = 4
    """Passes over each rollout (N+: 4)."""
    learning_rate: float = 1e-4
    """AdamW learning rate for the policy and value adapters (N+ full fine-tuning uses 3e-6; LoRA needs more)."""
    adam_eps: float = 1e-5
    """N+ details: 1e-5, not PyTorch's 1e-8."""
    lr_scheduler: Literal["linear", "constant"] = "linear"
    """`linear` decays the learning rate towards zero over `updates` (as Ziegler et al. 2019's code);
    `constant` keeps it."""
    kl_coef: float = 0.05
    """β, the KL penalty coefficient (N+: 0.05; InstructGPT: 0.02)."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """Per-token KL estimator of Schulman's note "Approximating KL divergence": k1 = log(π/π_ref), unbiased but
    negative on some samples (Ziegler et al. 2019, N+); k3 = (r − 1) − log r with r = π_ref/π, never negative."""
    adaptive_kl: bool = False
    """Steer β towards target_kl (Ziegler et al. 2019)."""
    target_kl: float = 6.0
    """KL the adaptive controller steers towards, in nats summed over a response (as `objective/kl`); 6 as in
    Ziegler et al. 2019's stylistic tasks. Read only with adaptive_kl."""
    kl_horizon: int = 10000
    """Adaptive controller's horizon in responses: each update moves β by at most 20% x batch_size / kl_horizon
    (Ziegler et al. 2019: 10000 episodes). Read only with adaptive_kl."""
    gamma: float = 1.0
    """γ, the per-token discount of GAE; 1 = none, as in Ziegler et al. 2019, Stiennon et al. 2020 and N+."""
    lam: float = 0.95
    """λ of GAE (Schulman et al. 2016): 1 = Monte Carlo returns, 0 = one-step TD; 0.95 as in Ziegler et al.
    2019, Stiennon et al. 2020 and N+."""
    cliprange: float = 0.2
    """ε of the clipped surrogate: the ratio counts only inside [1 − ε, 1 + ε] (Schulman et al. 2017: 0.2)."""
    cliprange_value: float = 0.2
    """ε_V: a new value counts only this far from the rollout's, in (normalised) reward units (Ziegler et al.
    2019, N+: 0.2)."""
    vf_coef: float = 0.1
    """Weight of the value loss against the policy loss (Ziegler et al. 2019, N+: 0.1)."""
    whiten_rewards: bool = False
    """Whiten the KL-shaped per-token rewards over the rollout (keeping their mean) before GAE. Off as in the
    N+ recipe; Ziegler et al. 2019's code had it on. Advantages are whitened either way."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm over the policy and value adapters, every optimiser step. The N+
    recipe does not clip; we clip at 1.0."""
    gradient_checkpointing: bool = False
    """Recompute the base's activations in the backward of the policy and value passes: the training
    activations, not the weights, are most of PPO's memory at real batch sizes; about 30% more time."""
    backward_precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Precision of the backward pass's products through the frozen base weights (the input gradients of the
    LoRA layers; core/fused_lora.py). `auto`: bf16 on a CPU with AMX, where they run ~3x faster with both casts
    (SmolLM2's update, training phase: 5.94 -> 5.23 s), else fp32. The forward pass, and so log-probs, ratios
    and losses, stays in the model's dtype; gradients move by ~0.3% a layer, the precision of any backward pass
    through a bf16 base. `fp32` for gradients exact to fp32 rounding."""
    ptx_coef: float = 0.0
    """PPO-ptx (InstructGPT): weight of a language-modelling loss on `ptx_data`; 0 = off."""
    ptx_data: InputPath | None = None
    """Instructions (SFT data) for the PPO-ptx loss."""
    seed: int = 42
    """Seeds any fresh adapter's initial weights, the prompt order, each update's sampling and mini-batch shuffle."""
    eval_steps: int = 5
    """Greedy evaluation on held-out prompts every this many updates; before the first and after the last
    update in any case (0 = only those two)."""
    sample_steps: int = 5
    """Write sample completions with scores every this many updates (0 = never)."""
    save_steps: int = 10
    """Checkpoint every this many updates (and after the last)."""

    def __post_init__(self):
        check(self.save_steps > 0, "training.save_steps", f"must be > 0, got {self.save_steps}")
        for name in ("eval_steps", "sample_steps"):
            check(getattr(self, name) >= 0, f"training.{name}", f"must be >= 0, got {getattr(self, name)}")
        for name in ("updates", "batch_size", "mini_batch_size", "grad_accum", "ppo_epochs", "max_tokens_per_batch"):
            check(getattr(self, name) > 0, f"training.{name}", f"must be > 0, got {getattr(self, name)}")
        check(self.batch_size % self.mini_batch_size == 0, "training.mini_batch_size", "must divide training.batch_size")
        check(self.mini_batch_size % self.grad_accum == 0, "training.grad_accum", "must divide training.mini_batch_size")
        check(self.ptx_coef == 0 or self.ptx_data is not None, "training.ptx_data", "needed when ptx_coef > 0")
        for name in ("learning_rate", "adam_eps", "target_kl", "kl_horizon", "cliprange", "cliprange_value", "max_grad_norm"):
            check(getattr(self, name) > 0, f"training.{name}", f"must be > 0, got {getattr(self, name)}")
        for name in ("kl_coef", "vf_coef", "ptx_coef"):
            check(getattr(self, name) >= 0, f"training.{name}", f"must be >= 0, got {getattr(self, name)}")
        for name in ("gamma", "lam"):
            check(0 <= getattr(self, name) <= 1, f"training.{name}", f"must be in [0, 1], got {getattr(self, name)}")
        check(self.seed >= 0, "training.seed", f"must be >= 0, got {self.seed}")


@dataclass
class GuardSettings:
    max_kl: float = 50.0
    """Stop when objective/kl (summed over a response, nats) exceeds this."""
    max_ratio: float = 5.0
    """Stop when the mean policy ratio of a mini-batch leaves [1/max_ratio, max_ratio]."""
    constant_reward_updates: int = 3
    """Stop when the reward gives every response of a rollout the same score this many updates in a
    row: a collapsed reward model (or a rule that never fires) leaves PPO nothing to learn. 0 = off."""

    def __post_init__(self):
        check(self.max_kl > 0, "guards.max_kl", f"must be > 0, got {self.max_kl}")
        check(self.max_ratio > 1, "guards.max_ratio", f"must be > 1, got {self.max_ratio}")
        check(self.constant_reward_updates >= 0, "guards.constant_reward_updates",
              f"must be >= 0 (0 = off), got {self.constant_reward_updates}")


@dataclass
class PPOConfig:
    out_dir: str = "runs/ppo"
    """The stage output directory (DESIGN.md contract)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy base; `model.adapter` is the SFT adapter to start from (and the frozen reference)."""
    reward: RewardSettings = field(default_factory=RewardSettings)
    """What scores a response: the reward model (normalised unless `reward.normalise` is off) or a rule function."""
    data: PPOData = field(default_factory=PPOData)
    """Training prompts and the held-out ones of the in-loop evaluation."""
    generation: SamplingSettings = field(default_factory=SamplingSettings)
    """How rollouts are sampled; the temperature also divides the logits of every log-prob pass."""
    training: PPOSettings = field(default_factory=PPOSettings)
    """The algorithm and its schedule: batch sizes, optimiser, KL penalty, GAE, the clipped losses, and how
    often to evaluate, write samples and checkpoint."""
    guards: GuardSettings = field(default_factory=GuardSettings)
    """When to stop a run that has gone wrong, with a checkpoint."""
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(logging_steps=1))
    """W&B settings. PPO logs every update to metrics.jsonl and W&B; it does not read logging_steps."""

    # what this stage called otherwise before the one vocabulary of every stage (accepted with a notice)
    RENAMED = {"ppo": "training", "sampling": "generation", "save_every": "training.save_steps",
               "eval_every": "training.eval_steps", "sample_every": "training.sample_steps"}
