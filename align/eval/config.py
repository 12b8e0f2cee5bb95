"""EvalConfig: stage 4's knobs. Which models, which prompts, how they answer, what scores them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from align.core.config import check
from align.core.input_paths import InputPath
from align.core.tracking import TrackingConfig
from align.reward.ensemble import Objective
from align.stages import STAGES

# `<model>/<metric>` keys: a name with a slash would split in two
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# keys under this prefix describe the evaluation itself, not one model
META = "eval"
CURVE_STAGES = tuple(name for name in STAGES if name != "eval")  # every stage that trains


@dataclass
class GenerationSettings:
    """The same for every model, so answers differ only by the model."""

    max_new_tokens: int = 48
    """Answer length cap in tokens; an answer that reaches it has no EOS (counted in `no_eos_frac`)."""
    temperature: float = 0.7
    """Sampling temperature, also the temperature of the log-probs behind `kl_to_base` (N+ details: 0.7)."""
    top_p: float = 1.0
    """Nucleus sampling; 1 samples the whole tempered distribution, which `kl_to_base` assumes."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """One sampled pass over the prompts per seed; every model draws with the same seeds."""
    samples_per_prompt: int = 2
    """Sampled answers per prompt in each pass, besides the greedy one; 0 = greedy only."""
    batch_size: int = 16
    """Prompts per generate call (each with its samples)."""
    max_prompt_length: int = 256
    """Prompts longer than this (in tokens) keep their end."""
    working_copy: bool = False
    """Answer on a working copy of each model's linear weights, its LoRA adapter merged in and on the CPU packed
    for few-row products (core/sampling_weights.py; PPO's generation.working_copy). Off by default: on the demo's
    evaluation (75 rows a sampled pass, two threads) answering took 65 s against 66 s while the peak grew from
    2.7 to 3.9 GB (2026-12-06). It pays at batch 4-8 on one thread (1.2-1.4x, bench/README.md section 4)."""

    def __post_init__(self):
        check(self.max_new_tokens > 0, "generation.max_new_tokens", "must be > 0")
        check(self.temperature > 0, "generation.temperature", "must be > 0 (log-probs divide by it)")
        check(0 < self.top_p <= 1, "generation.top_p", "must be in (0, 1]")
        check(len(self.seeds) > 0, "generation.seeds", "give at least one seed")
        check(self.samples_per_prompt >= 0, "generation.samples_per_prompt", "must be >= 0")
        check(self.batch_size > 0, "generation.batch_size", "must be > 0")


@dataclass
class EvalConfig:
    out_dir: str = "runs/eval"
    """The stage output directory (DESIGN.md contract): report.md, report.html, plots, metrics.json."""
    models: dict[str, str] = field(default_factory=lambda: {"base": "smollm2-135m-instruct"})
    """name -> model: a base (`smollm2-135m-instruct`, a model directory, a hub id you have cached), or
    one of our stage directories (`runs/x/sft`, `runs/x/ppo`) whose `adapter/` loads on its recorded base.
    LoRA adapters on the same base share one loaded copy of it."""
    reward: str | None = None
    """An `align reward` stage directory: rewards, win rates and best-of-n use it; unset = none of those."""
    reward_objective: Objective = "mean"
    """With a reward-model ensemble: how its members' normalised scores make one reward (`mean`, `uwo`: the
    mean minus reward_uwo_lambda x their std, `wco`: the lowest), as PPO's reward.ensemble_objective."""
    reward_uwo_lambda: float = 1.0
    """With reward_objective `uwo`: the weight of the members' disagreement."""
    prompts: InputPath = "data/demo/heldout.jsonl"
    """Held-out prompts ({"prompt"} or {"messages"}); a `reference` answer enables ROUGE and BLEU."""
    eval_size: int = 50
    """Use the first this many prompts; 0 = all."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    """How every model answers: length cap, temperature, seeds, samples per prompt."""
    best_of: int = 0
    """Best-of-n under the reward model as an extra row per model (`<model>_best_of_<n>`): the sampled
    answer with the highest reward out of n; 0 = off."""
    judge: str | None = None
    """A Python `module:function(prompt, response) -> float`, e.g. `align.demo.tasks:judge`."""
    perplexity_text: InputPath | None = None
    """Held-out general text (.txt, documents split by blank lines; or JSONL with "text"): perplexity
    per model shows what tuning forgot."""
    perplexity_max_length: int = 256
    """Perplexity is taken over windows of at most this many tokens."""
    text_metrics: list[str] = field(default_factory=lambda: ["rouge", "bleu"])
    """Answers against the prompts' `reference`, through `evaluate`: `rouge` (ROUGE-1/2/L per answer) and
    `bleu` (corpus BLEU) ship with align and work offline; any other id evaluate resolves (`meteor`,
    `bertscore`, a path to a metric script) is added as `<id>` or `<id>_<key>`, and one it cannot load here
    is left out with a one-line warning."""
    few_shot: int = 0
    """The in-context baseline: a row `base_<K>shot`, the reference base model with K demonstrations from
    `few_shot_data` as earlier turns of every prompt (the same K for all, none an evaluated prompt); 0 = off."""
    few_shot_data: InputPath | None = None
    """Instructions to draw the demonstrations from: the SFT data (`align run` wires the SFT stage's)."""
    mmlu: InputPath | None = None
    """A multiple-choice benchmark in MMLU's layout: CSV rows question,A,B,C,D,answer (no header, as MMLU
    ships them) or JSONL {"question", "choices": [4], "answer": index}. It runs through lm-eval as a local task
    with MMLU's zero-shot prompt: `mmlu_accuracy`."""
    benchmarks: list[str] = field(default_factory=list)
    """lm-evaluation-harness tasks every model runs, zero-shot (e.g. [mmlu, hellaswag, arc_easy]): `bench_<task>`
    per model and the report's forgetting table. Their data come from the hub or lm-eval's cache; a task that
    cannot be loaded here is reported unavailable and left out."""
    benchmark_tasks: InputPath | None = None
    """A folder of lm-eval task YAML files (lm-eval's include_path): tasks of your own, or standard ones pointed
    at a local copy of their data; name them in `benchmarks`."""
    benchmarks_limit: int = 0
    """Documents per benchmark task (lm-eval's `limit`), for a quick look on a CPU; 0 = all."""
    mmlu_size: int = 0
    """Use the first this many questions; 0 = all."""
    stages: dict[str, str] = field(default_factory=dict)
    """Stage directories whose training curves go into the report: keys sft, reward, ppo (dpo, grpo, rloo)."""
    ppo_runs: dict[str, str] = field(default_factory=dict)
    """More PPO stage directories, label -> directory, drawn with `stages.ppo` in the over-optimisation chart:
    gold judge and proxy reward of their in-loop evaluations against KL (PPO's data.eval_judge gives the gold),
    e.g. one reward model against an ensemble."""
    reference: str = "base"
    """The model `kl_to_base` is measured against. When no model has this name, an adapter's own base
    (adapters off) is its reference."""
    compare_to: list[str] = field(default_factory=lambda: ["base", "sft"])
    """Models every other model meets pairwise (`win_rate_vs_<name>`); names not in `models` are skipped."""
    quantization: Literal["auto", "nf4", "none"] = "auto"
    """Precision of the policies' shared bases. `auto`: 4-bit NF4 where an adapter on that base was trained
    against NF4 (QLoRA; its align_base.json says), so adapters run on the weights they learned on; full
    precision otherwise. `none`: the original weights for all (as after merging an adapter). Without a
    GPU, NF4 weights are dequantised once after loading: the same values at full-precision speed. The
    reward model always loads as it was trained: its scores and normaliser depend on that precision."""
    bootstrap_samples: int = 1000
    """Resamples behind every 95% interval."""
    seed: int = 0
    """Seed of the bootstrap."""
    examples_in_report: int = 10
    """Prompts shown side by side in the report."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """W&B: one run with the comparison and generation tables and the report's charts (logging_steps unused)."""

    def __post_init__(self):
        check(bool(self.models), "models", "name at least one model, e.g. base=smollm2-135m-instruct")
        check(self.reward_uwo_lambda >= 0, "reward_uwo_lambda", f"must be >= 0, got {self.reward_uwo_lambda}")
        for name in self.models:
            check(bool(MODEL_NAME.match(name)) and name != META, f"models.{name}",
                  f"a model name is letters, digits, _ . - (and not {META!r})")
        check(self.eval_size >= 0, "eval_size", "must be >= 0 (0 = all prompts)")
        check(self.best_of == 0 or self.best_of >= 2, "best_of", f"must be 0 (off) or >= 2, got {self.best_of}")
        check(self.perplexity_max_length >= 2, "perplexity_max_length", "must be >= 2")
        check(self.mmlu_size >= 0, "mmlu_size", "must be >= 0 (0 = all questions)")
        check(self.benchmarks_limit >= 0, "benchmarks_limit", "must be >= 0 (0 = all documents)")
        unknown = sorted(set(self.stages) - set(CURVE_STAGES))
        check(not unknown, "stages", f"unknown {unknown}; known: {', '.join(CURVE_STAGES)}")
        check(self.bootstrap_samples >= 100, "bootstrap_samples", "must be >= 100 for a 95% interval")
        check(self.few_shot >= 0, "few_shot", f"must be >= 0 (0 = off), got {self.few_shot}")
        check(self.few_shot == 0 or self.few_shot_data is not None, "few_shot_data",
              "needed with few_shot: the instructions (SFT data) to draw the demonstrations from")
        check(self.few_shot == 0 or self.reference in self.models, "few_shot",
              f"the in-context row is the reference model {self.reference!r} prompted; models has no such name")

    @property
    def samples_per_seed(self) -> int:
        """Sampled answers per prompt per seed: enough for best-of-n as well."""
        need = max(self.generation.samples_per_prompt * len(self.generation.seeds), self.best_of)
        return -(-need // len(self.generation.seeds))
