"""Stage 1: QLoRA instruction SFT. Load data -> load model -> TRL SFTTrainer -> save adapter.

Under `accelerate launch` training.batch_size stays the global batch (TRL's is per device): each
of n processes takes batch_size / n, and only the main process writes files. A process's share goes
through the model in micro-batches within training.max_tokens_per_batch, their gradients accumulated
(align.core.memory.micro_batches), and a budget that cannot fit is refused before the model loads.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from align.core import (distributed, guards, heap, memory, model_card, modeling, resumable, rundir, soft_prompt,
                        tracking)
from align.core.checkpoint import resumed_settings_callback
from align.core.config import dump_yaml
from align.sft.config import SFTConfig
from align.sft.formats import load_sft_examples, template_tokenizer


def train(config: SFTConfig, *, overwrite: bool = False, resume: bool = False,
          allow_changes: bool = False) -> dict[str, Any]:
    """Run SFT into `config.out_dir`; returns the figures written to metrics.json."""
    out = rundir.StageDir(config.out_dir)
    out.check_options(overwrite=overwrite, resume=resume, allow_changes=allow_changes)  # before the tokenizer loads
    train_examples, eval_examples = load_sft_examples(config)  # bad data fails before any model loads
    processes = distributed.world().size
    distributed.check_global_batch({"training.batch_size": config.training.batch_size}, processes)
    # the largest micro-batch pads (sequences x max_length) tokens through TRL's fused LM head
    memory.check_training_fits("SFT", config, micro_batches(config, processes), config.training.max_length)
    with distributed.stage_run(out, dump_yaml(config), overwrite=overwrite, resume=resume,
                               allow_changes=allow_changes) as world:
        with guards.explain_out_of_memory("SFT", guards.memory_advice(config, **MEMORY_SETTINGS)):
            return _train(config, out, train_examples, eval_examples, resume, world)


# what to change when a step does not fit in memory
PROMPT_TOKENS = "prompt_tokens.json"
MEMORY_SETTINGS = {"lower": ("training.max_tokens_per_batch", "training.batch_size", "training.max_length"),
                   "raise_": ("training.grad_accum",), "enable": ("training.gradient_checkpointing",)}


def micro_batches(config: SFTConfig, processes: int) -> memory.MicroBatches:
    """Each process's sequences per forward pass and passes per optimiser step: a sequence pads to max_length at most."""
    t = config.training
    return memory.micro_batches(t.batch_size, t.grad_accum, processes, t.max_tokens_per_batch, t.max_length)


def _train(config: SFTConfig, out: rundir.StageDir, train_examples, eval_examples, resume: bool,
           world: distributed.World) -> dict[str, Any]:
    """Build the trainer, evaluate the untrained model once, train (or go on from the newest checkpoint),
    then the final figures and the saved weights."""
    metrics = tracking.MetricsLog(out.path, write=world.is_main)
    previous = out.metrics() if resume else {}
    checkpoint = out.newest_checkpoint() if resume else None
    if checkpoint is not None:
        metrics.truncate_after(int(checkpoint.name.split("-")[-1]))

    tokenizer = template_tokenizer(config)
    trainer, params = _build_trainer(config, out, tokenizer, train_examples, eval_examples, metrics, world)
    if not memory.on_cuda():
        heap.large_buffers_from_mmap()  # freed activations go back to the OS, not into the heap's holes
    figures: dict[str, Any] = {
        **params,
        "data/train_records": len(train_examples),
        "data/too_long_truncated": train_examples.truncated,
        "data/too_long_dropped": train_examples.dropped,
        "data/eval_records": len(eval_examples),
        "data/eval_too_long_truncated": eval_examples.truncated,
        "data/eval_too_long_dropped": eval_examples.dropped,
    }
    if eval_examples and "eval/loss_before" not in previous:  # a resumed run keeps the figure of its start
        figures.update(_evaluate_before(trainer))
    metrics.update({**previous, **figures})

    started = time.time()
    _train_or_go_on(trainer, checkpoint)
    runtime = time.time() - started
    figures.update(_final_figures(trainer, bool(eval_examples), runtime))
    if world.is_main:
        saved = save_weights(trainer.model, tokenizer, config, out)
        if config.model.tuning == "prompt_tuning":
            write_prompt_tokens(saved, trainer.model, tokenizer, out)
    metrics.update(figures)
    if world.is_main:
        model_card.describe_outputs(out.path, "sft", config, metrics.final)
    return metrics.final


def _build_trainer(config: SFTConfig, out: rundir.StageDir, tokenizer: Any, train_examples, eval_examples,
                   metrics: tracking.MetricsLog, world: distributed.World) -> tuple[Any, dict[str, Any]]:
    """TRL's SFTTrainer over the base model with its tuning attached, and the model's parameter counts."""
    import datasets
    import torch
    import trl

    torch.manual_seed(config.training.seed)  # the new adapter's initial weights: the same on every run
    model = modeling.load_base(config.model, tokenizer)
    model = modeling.attach_tuning(model, config.model)
    trainable, total = modeling.count_parameters(model)

    t = config.training
    trainer = trl.SFTTrainer(
        model=model,
        args=_trainer_args(config, out, bool(eval_examples), world),
        train_dataset=datasets.Dataset.from_list(train_examples),
        eval_dataset=datasets.Dataset.from_list(eval_examples) if eval_examples else None,
        processing_class=tokenizer,
        callbacks=[tracking.trainer_callback(metrics), guards.nonfinite_callback(),
                   resumed_settings_callback(config.learning_rate, t.weight_decay)],
    )
    modeling.undo_trl_bf16_adapters(trainer.model)
    trainer.add_callback(resumable.end_callback())
    _check_trl_kept_all(trainer, train_examples, eval_examples)
    return trainer, {"params/trainable": trainable, "params/total": total,
                     "params/trainable_pct": round(100 * trainable / total, 4)}


def _trainer_args(config: SFTConfig, out: rundir.StageDir, has_eval: bool, world: distributed.World) -> Any:
    """Our config as TRL's: per-device batches from the global one, checkpoints into out/checkpoints."""
    import torch
    import trl

    t, micro = config.training, micro_batches(config, world.size)
    return trl.SFTConfig(
        output_dir=str(out.checkpoints),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=micro.size,
        per_device_eval_batch_size=micro.size,
        gradient_accumulation_steps=micro.accumulation,
        learning_rate=config.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        max_length=t.max_length,
        completion_only_loss=t.completion_only_loss,
        gradient_checkpointing=t.gradient_checkpointing,
        eval_strategy="no" if not has_eval else "steps" if t.eval_steps else "epoch",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_steps=config.tracking.logging_steps,
        # TRL defaults to bf16=True, which runs ~17x slower than fp32 on CPUs without bf16 units
        bf16=modeling.bf16_is_fast(),
        fp16=False,
        seed=t.seed,
        data_seed=t.seed,
        report_to=tracking.configure_wandb_env(config.tracking, out.path, "sft"),
        run_name=config.tracking.run_name or out.path.name,
        dataloader_num_workers=0,
        dataset_num_proc=None,
        # without CUDA, transformers joins the launched processes (gloo) only when told to use the
        # CPU; otherwise each trains alone on the whole data
        use_cpu=not torch.cuda.is_available(),
    )


def _evaluate_before(trainer: Any) -> dict[str, float]:
    """The held-out loss and perplexity of the untrained model."""
    loss = trainer.evaluate()["eval_loss"]
    # evaluate() prepares the model for evaluation (no DDP) and marks it prepared; train() would
    # then skip the DDP wrap, and the processes would never sum gradients (accelerate 1.15,
    # transformers 5.24). Unmarked, train() wraps it.
    trainer.model._is_accelerate_prepared = False
    return {"eval/loss_before": loss, "eval/perplexity_before": _perplexity(loss)}


def _train_or_go_on(trainer: Any, checkpoint: Path | None) -> None:
    """Train from the start, or from `checkpoint` with its optimiser, schedule, data order and token count."""
    resumable.restore_token_count(trainer, checkpoint)
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except resumable.NothingLeftToTrain:
        pass  # the checkpoint is the last step's: its weights and state are the trained ones
    except guards.NonFinite as e:
        raise guards.halt_trainer(trainer, e, "SFT", "Lower training.learning_rate or look for broken records") from None


def _final_figures(trainer: Any, has_eval: bool, runtime: float) -> dict[str, Any]:
    """The trained model's held-out loss and perplexity, and the training's loss, steps, time and tokens."""
    figures: dict[str, Any] = {}
    if has_eval:
        figures["eval/loss"] = _final_eval_loss(trainer)
        figures["eval/perplexity"] = _perplexity(figures["eval/loss"])
    tokens = _logged(trainer, "num_tokens")
    figures.update(
        {
            "train/loss": _logged(trainer, "loss"),
            "train/loss_mean": resumable.mean_logged_loss(trainer.state.log_history),
            "train/steps": trainer.state.global_step,
            "train/runtime_s": round(runtime, 2),
            "train/tokens": tokens,
            "train/tokens_per_s": round(tokens / runtime, 1) if tokens and runtime > 0 else None,
            **tracking.peak_memory_mb(),
        }
    )
    return figures


def save_weights(model: Any, tokenizer: Any, config: SFTConfig, out: rundir.StageDir) -> Path:
    """adapter/ (LoRA, prompt tuning) or model/ (full), each loadable by peft/transformers alone."""
    target = out.file(rundir.MODEL if config.model.tuning == "full" else rundir.ADAPTER)
    return modeling.save_loadable(model, tokenizer, target, config.model)


def write_prompt_tokens(adapter_dir: Path, model: Any, tokenizer: Any, out: rundir.StageDir) -> Path:
    """prompt_tokens.json: each virtual token of the trained soft prompt as its 5 nearest vocabulary tokens
    (cosine similarity to the input embeddings); the first few are printed."""
    nearest = soft_prompt.nearest_tokens(soft_prompt.load_soft_prompt(adapter_dir),
                                         model.get_input_embeddings().weight, tokenizer)
    path = out.file(PROMPT_TOKENS)
    rundir.write_json_atomic(path, [{"position": i, "nearest": row} for i, row in enumerate(nearest)])
    print(f"soft prompt, as its nearest tokens ({path}): {soft_prompt.readable(nearest)}")
    return path


def _check_trl_kept_all(trainer: Any, train_examples: list, eval_examples: list) -> None:
    """TRL drops the examples truncation leaves without a completion token; load_sft_examples has left
    those out already, so a count that differs means our token count and TRL's disagree."""
    for name, examples, dataset in (("training", train_examples, trainer.train_dataset),
                                    ("eval", eval_examples, trainer.eval_dataset)):
        if dataset is not None and len(dataset) != len(examples):
            raise RuntimeError(f"TRL kept {len(dataset)} of the {len(examples)} {name} examples that fit "
                               f"training.max_length by align's token count: the two tokenisations disagree")


def _logged(trainer: Any, key: str) -> float | None:
    """The newest value of `key` in the trainer's log history."""
    for entry in reversed(trainer.state.log_history):
        if key in entry:
            return entry[key]
    return None


def _final_eval_loss(trainer: Any) -> float:
    """The held-out loss of the final weights: the trainer's own evaluation when it ran at the last step
    (eval_strategy "epoch" always does), otherwise one more evaluation."""
    last = next((e for e in reversed(trainer.state.log_history) if "eval_loss" in e), None)
    if last is not None and last.get("step") == trainer.state.global_step:
        return last["eval_loss"]
    return trainer.evaluate()["eval_loss"]


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")

