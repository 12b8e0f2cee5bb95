"""DPO, KTO, ORPO, GRPO and RLOO: load data -> load model -> TRL trainer -> save adapter. Thin on purpose.

training.batch_size is the global batch; each process's share goes through the model in micro-batches
within training.max_tokens_per_batch, their gradients accumulated (align.core.memory.micro_batches), and
a budget that cannot fit is refused before the model loads (`Passes` says what an item puts through).
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

from align.convert.kto import pairs_to_kto
from align.core import distributed, guards, heap, memory, model_card, modeling, resumable, rundir, tracking
from align.core.checkpoint import resumed_settings_callback
from align.core.config import dump_yaml
from align.core.errors import AlignError
from align.core.records import load_records
from align.prefs.config import DPOConfig, DPOData, KTOConfig, KTOData, OnlineConfig, ORPOConfig, RecipeTraining, RLOOConfig
from align.reward.formats import load_groups, split_groups


def preference_examples(path: str) -> list[dict[str, Any]]:
    """TRL's conversational preference rows; a ranking gives one row per (better, worse) pair."""
    return preference_rows(load_groups(path))


def preference_rows(groups: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for group in groups:
        for w, l in group.pairs:
            rows.append({"prompt": list(group.prompt),
                         "chosen": [{"role": "assistant", "content": group.completions[w]}],
                         "rejected": [{"role": "assistant", "content": group.completions[l]}]})
    return rows


class RewardModelFunction:
    """Our reward model as a TRL reward function: normalised r(x, y) per completion."""

    __name__ = "reward_model"

    def __init__(self, path: str, objective: str = "mean", uwo_lambda: float = 1.0):
        from align.reward import members

        self.model = members.load(path, objective, uwo_lambda)

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        prompts = [p if isinstance(p, list) else [{"role": "user", "content": p}] for p in prompts]
        return self.model.normaliser(self.model.score(prompts, texts)).tolist()


class RuleFunction:
    """A `module:function(prompt, response) -> float` as a TRL reward function."""

    def __init__(self, spec: str):
        from align.core.callables import load_callable

        self.spec, self.fn, self.__name__ = spec, load_callable(spec), spec.rpartition(":")[2]

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float]:
        from align.core.callables import reward_value

        prompt_texts = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [reward_value(self.fn, self.spec, p, t) for p, t in zip(prompt_texts, texts)]


class Passes(NamedTuple):
    """What one item of a recipe's batch (a pair, a row, a completion) puts through the model with gradients."""

    tokens: Callable[[Any], int]
    """Its padded tokens at most, given the tokenizer."""
    length: str = "training.max_length"
    """The setting that bounds them, named when a micro-batch is down to `least` items."""
    least: int = 1
    """Items a forward pass needs (KTO's KL estimate pairs rows within one: 2)."""
    head: memory.Head = "fused"
    """TRL 1.16's fused log-probs, or `full` logits (TRL's experimental ORPO)."""


def common_args(t: RecipeTraining, out: rundir.StageDir, tracking_config: tracking.TrackingConfig, job: str,
                micro: memory.MicroBatches) -> dict:
    return dict(
        output_dir=str(out.checkpoints), num_train_epochs=t.epochs, max_steps=t.max_steps,
        # batch_size is the global batch (as for SFT and the reward model); TRL's is per process and per pass
        per_device_train_batch_size=micro.size, gradient_accumulation_steps=micro.accumulation,
        gradient_checkpointing=t.gradient_checkpointing,
        learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_ratio,
        beta=t.beta, save_strategy="steps", save_steps=t.save_steps, save_total_limit=2,
        logging_steps=tracking_config.logging_steps, seed=t.seed,
        # TRL defaults to bf16, ~17x slower than fp32 on CPUs without bf16 units
        bf16=modeling.bf16_is_fast(), fp16=False,
        report_to=tracking.configure_wandb_env(tracking_config, out.path, job),
        run_name=tracking_config.run_name or out.path.name, dataloader_num_workers=0,
    )


def plan_passes(config: Any, job: str, passes: Passes, tokenizer: Any, processes: int) -> memory.MicroBatches:
    """The micro-batches of each process, refused before the model loads when the estimated peak of the
    largest (align.core.memory, CPU only) exceeds the memory available."""
    t, item_tokens = config.training, passes.tokens(tokenizer)
    micro = memory.micro_batches(t.batch_size, t.grad_accum, processes, t.max_tokens_per_batch, item_tokens, passes.least)
    memory.check_training_fits(job.upper(), config, micro, item_tokens, least=passes.least, length=passes.length,
                               head=passes.head)
    return micro


def run_recipe(config: Any, job: str, build_trainer: Any, overwrite: bool, resume: bool,
               allow_changes: bool = False, passes: Passes | None = None,
               data_figures: dict[str, Any] | None = None, tokenizer: Any = None) -> dict[str, Any]:
    """The shared frame: output dir contract, model with adapter, metrics files, save. `tokenizer`: the one
    a recipe already loaded to read its data."""
    modeling.check_model(config.model)
    out = rundir.StageDir(config.out_dir)
    out.check_options(overwrite=overwrite, resume=resume, allow_changes=allow_changes)  # before the tokenizer loads
    processes = distributed.world().size
    distributed.check_global_batch({"training.batch_size": config.training.batch_size}, processes)
    tokenizer = tokenizer or modeling.load_tokenizer(modeling.resolve_model_path(config.model.name),
                                                     config.model.trust_remote_code)
    passes = passes or Passes(lambda _: config.training.max_length)
    micro = plan_passes(config, job, passes, tokenizer, processes)
    advice = guards.memory_advice(config, lower=("training.max_tokens_per_batch", "training.batch_size", passes.length),
                                  raise_=("training.grad_accum",),
                                  enable=() if config.training.gradient_checkpointing else ("training.gradient_checkpointing",))
    with distributed.stage_run(out, dump_yaml(config), overwrite=overwrite, resume=resume, allow_changes=allow_changes), \
            guards.explain_out_of_memory(job.upper(), advice):
        metrics = tracking.MetricsLog(out.path)
        import torch

        torch.manual_seed(config.training.seed)  # the new adapter's initial weights: the same on every run
        model = modeling.attach_tuning(modeling.load_base(config.model, tokenizer), config.model)
        callbacks = [tracking.trainer_callback(metrics), guards.nonfinite_callback(),
                     resumed_settings_callback(config.training.learning_rate, 0.0)]
        trainer = build_trainer(model, tokenizer, out, callbacks, micro)
        trainer.add_callback(resumable.end_callback())
        modeling.undo_trl_bf16_adapters(trainer.model)
        if not memory.on_cuda():
            heap.large_buffers_from_mmap()  # freed activations go back to the OS, not into the heap's holes
        if data_figures:
            metrics.update(data_figures)
        return _train_and_save(config, job, trainer, tokenizer, out, metrics, resume)


def _train_and_save(config: Any, job: str, trainer: Any, tokenizer: Any, out: rundir.StageDir,
                    metrics: tracking.MetricsLog, resume: bool) -> dict[str, Any]:
    """Train (or go on from the newest checkpoint), gather the figures, save the adapter."""
    checkpoint = out.newest_checkpoint() if resume else None
    if checkpoint is not None:  # steps past the checkpoint are run again: log them once
        metrics.truncate_after(int(checkpoint.name.split("-")[-1]))
    resumable.restore_token_count(trainer, checkpoint)
    started = time.time()
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except resumable.NothingLeftToTrain:
        pass  # the checkpoint is the last step's: its weights and state are the trained ones
    except guards.NonFinite as e:
        raise guards.halt_trainer(trainer, e, job.upper(), "Lower training.learning_rate or training.beta") from None
    figures = {"train/loss_mean": resumable.mean_logged_loss(trainer.state.log_history),
               "train/steps": trainer.state.global_step, "train/runtime_s": round(time.time() - started, 2),
               **tracking.peak_memory_mb()}
    if getattr(trainer, "eval_dataset", None) is not None:
        figures.update({tracking.hf_key(k): v for k, v in trainer.evaluate().items()})
    for entry in trainer.state.log_history:  # the newest value of each logged figure
        # not the end-of-train() summary: it covers one train() call, and a resumed one has none
        figures.update({tracking.hf_key(k): v for k, v in entry.items()
                        if not k.startswith("train_") and k != "total_flos"})
    modeling.save_loadable(trainer.model, tokenizer, out.file(rundir.ADAPTER), config.model)
    metrics.update(figures)
    if distributed.world().is_main:
        model_card.describe_outputs(out.path, job, config, metrics.final)
    return metrics.final


def preference_split(data: DPOData, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """DPO's and ORPO's (train, held-out) preference rows: `data.eval`, or `eval_fraction` of the prompts.

    Whole prompts are held out, as for the reward model and KTO: a ranking's pairs share completions, so
    split pair by pair the held-out pairs would grade completions the policy was trained on."""
    if data.eval:
        return preference_examples(data.train), preference_examples(data.eval)
    train_groups, eval_groups = split_groups(load_groups(data.train), data.eval_fraction, seed)
    return preference_rows(train_groups), preference_rows(eval_groups)


def pair_passes(config: Any) -> Passes:
    """A preference pair: chosen and rejected go through together, each padded to the longer (TRL's DPO and ORPO)."""
    return Passes(lambda _: 2 * config.training.max_length)


def dpo(config: DPOConfig, *, overwrite: bool = False, resume: bool = False, allow_changes: bool = False) -> dict[str, Any]:
    import datasets
    import trl

    train_rows, eval_rows = preference_split(config.data, config.training.seed)  # bad data fails before a model loads

    def build(model, tokenizer, out, callbacks, micro):
        # keep_end: a pair longer than max_length loses its conversation's start, as the reward model's does;
        # TRL's keep_start would cut the completions' ends and drop every pair whose prompt alone fills it
        args = trl.DPOConfig(**common_args(config.training, out, config.tracking, "dpo", micro),
                             max_length=config.training.max_length, truncation_mode="keep_end",
                             eval_strategy="epoch" if eval_rows else "no", per_device_eval_batch_size=micro.size)
        return trl.DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(train_rows),
                              eval_dataset=datasets.Dataset.from_list(eval_rows) if eval_rows else None,
                              processing_class=tokenizer, callbacks=callbacks)

    return run_recipe(config, "dpo", build, overwrite, resume, allow_changes, pair_passes(config))


def kto_split(data: KTOData, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """KTO's (train, held-out) unpaired rows, each list shuffled: `data.eval`, or `eval_fraction` of the prompts."""
    import random

    if data.eval:
        train_groups, eval_groups = load_groups(data.train), load_groups(data.eval)
    else:  # whole prompts, not rows: a prompt's desirable and undesirable completions stay on one side
        train_groups, eval_groups = split_groups(load_groups(data.train), data.eval_fraction, seed)
    splits = pairs_to_kto(train_groups), pairs_to_kto(eval_groups)
    # TRL's KTOTrainer reads its rows in order (sequential sampling, every epoch), and estimates the KL term by
    # pairing each prompt with the previous row's completion in the batch: shuffled, the rows neither train in
    # file order nor pair a prompt with its own other completion (pairs_to_kto puts those side by side)
    for rows in splits:
        random.Random(seed).shuffle(rows)
    return splits


def kto(config: KTOConfig, *, overwrite: bool = False, resume: bool = False, allow_changes: bool = False) -> dict[str, Any]:
    import datasets
    import trl

    train_rows, eval_rows = kto_split(config.data, config.training.seed)  # bad data fails before a model loads
    t = config.training

    def build(model, tokenizer, out, callbacks, micro):
        args = trl.KTOConfig(**common_args(t, out, config.tracking, "kto", micro), max_length=t.max_length,
                             desirable_weight=t.desirable_weight, undesirable_weight=t.undesirable_weight,
                             eval_strategy="epoch" if eval_rows else "no",
                             # the rows' KL pairs are made in blocks of the training micro-batch, the eval rows' too
                             per_device_eval_batch_size=micro.size)
        return trl.KTOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(train_rows),
                              eval_dataset=datasets.Dataset.from_list(eval_rows) if eval_rows else None,
                              processing_class=tokenizer, callbacks=callbacks)

    # a row's completion goes through with gradients; its KL completion and the reference's passes without
    return run_recipe(config, "kto", build, overwrite, resume, allow_changes, Passes(lambda _: t.max_length, least=2))


def orpo(config: ORPOConfig, *, overwrite: bool = False, resume: bool = False, allow_changes: bool = False) -> dict[str, Any]:
    import warnings

    import datasets
    from trl.import_utils import TRLExperimentalWarning

    with warnings.catch_warnings():  # TRL 1.16 keeps ORPO in trl.experimental, and warns so on import
        warnings.simplefilter("ignore", TRLExperimentalWarning)
        from trl.experimental.orpo import ORPOConfig as TRLORPOConfig, ORPOTrainer

    train_rows, eval_rows = preference_split(config.data, config.training.seed)  # bad data fails before a model loads
    tokenizer = modeling.load_tokenizer(modeling.resolve_model_path(config.model.name), config.model.trust_remote_code)
    train_rows, dropped = fitting_prompts(train_rows, tokenizer, config.training.max_length)
    eval_rows, eval_dropped = fitting_prompts(eval_rows, tokenizer, config.training.max_length)

    def build(model, tokenizer, out, callbacks, micro):
        args = TRLORPOConfig(**common_args(config.training, out, config.tracking, "orpo", micro),
                             max_length=config.training.max_length,
                             eval_strategy="epoch" if eval_rows else "no", per_device_eval_batch_size=micro.size)
        return ORPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(train_rows),
                           eval_dataset=datasets.Dataset.from_list(eval_rows) if eval_rows else None,
                           processing_class=tokenizer, callbacks=callbacks)

    # TRL's experimental ORPO computes whole logits, not the fused head's log-probs
    return run_recipe(config, "orpo", build, overwrite, resume, allow_changes, pair_passes(config)._replace(head="full"),
                      {"data/too_long_dropped": dropped, "data/eval_too_long_dropped": eval_dropped}, tokenizer)


def fitting_prompts(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> tuple[list[dict[str, Any]], int]:
    """The rows whose prompt leaves room for completion tokens within max_length, and how many did not. TRL's
    ORPO cuts a long pair's completions, never its prompt: a prompt that fills max_length leaves both empty and
    the odds ratio of two empty completions is NaN. Refused when no training row is left."""
    kept = [r for r in rows if len(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                                                 return_dict=True)["input_ids"]) < max_length]
    if rows and not kept:
        raise AlignError(f"every one of the {len(rows)} pairs' prompts fills training.max_length ({max_length}) "
                         f"tokens, leaving no completion to learn from: raise training.max_length")
    return kept, len(rows) - len(kept)


def online(config: OnlineConfig, method: str, *, overwrite: bool = False, resume: bool = False,
           allow_changes: bool = False) -> dict[str, Any]:
    """GRPO or RLOO with our reward model (normalised) or a rule function as the reward."""
    import datasets
    import trl

    prompts = [{"prompt": list(r.messages)} for r in load_records(config.data.prompts, "prompts")]
    reward_fn = RuleFunction(config.reward.function) if config.reward.function else RewardModelFunction(config.reward.model, config.reward.ensemble_objective, config.reward.uwo_lambda)
    trainer_cls, args_cls = {"grpo": (trl.GRPOTrainer, trl.GRPOConfig), "rloo": (trl.RLOOTrainer, trl.RLOOConfig)}[method]
    t, g = config.training, config.generation

    def build(model, tokenizer, out, callbacks, micro):
        args = args_cls(**common_args(t, out, config.tracking, method, micro), num_generations=g.num_generations,
                        max_completion_length=g.max_new_tokens, temperature=g.temperature)
        return trainer_cls(model=model, reward_funcs=reward_fn, args=args, train_dataset=datasets.Dataset.from_list(prompts),
                           processing_class=tokenizer, callbacks=callbacks)

    # TRL 1.16 does not cut prompts: a completion's row holds the longest prompt (left-padded) and its tokens
    completion = Passes(lambda tokenizer: longest_prompt(tokenizer, prompts) + config.generation.max_new_tokens,
                        "generation.max_new_tokens")
    return run_recipe(config, method, build, overwrite, resume, allow_changes, completion)


def longest_prompt(tokenizer: Any, rows: list[dict[str, Any]]) -> int:
    """Tokens of the longest prompt with the chat template's generation prompt, as TRL's GRPO and RLOO render it."""
    return max((len(tokenizer.apply_chat_template(r["prompt"], tokenize=True, add_generation_prompt=True,
                                                  return_dict=True)["input_ids"]) for r in rows), default=0)


def grpo(config: OnlineConfig, **kw: Any) -> dict[str, Any]:
    return online(config, "grpo", **kw)


def rloo(config: RLOOConfig, **kw: Any) -> dict[str, Any]:
    return online(config, "rloo", **kw)
