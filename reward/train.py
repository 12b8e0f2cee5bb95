"""Stage 2: a scalar reward model from rankings with the K-wise InstructGPT loss.

Our own loop rather than TRL's RewardTrainer: that trainer takes pairs, and the K-wise loss
needs each prompt's K completions in one forward pass with its C(K,2) pairs weighted together.
Read top to bottom: data -> model -> (eval before) -> epochs of batches -> eval -> normaliser -> save.

Under `accelerate launch` training.batch_size stays the global batch: each process takes its share
of every batch, the figures are over the whole batch, and only the main process writes files.
"""

from __future__ import annotations

import contextlib
import math
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align.core import checkpoint, distributed, guards, heap, model_card, modeling, rundir, tracking
from align.core.config import dump_yaml, to_dict
from align.core.errors import AlignError, DataError, TrainingHalted
from align.reward import memory, members, micro_batches
from align.reward.config import RewardConfig
from align.reward.formats import Group, load_groups, regroup, split_groups
from align.reward.metrics import ranking_metrics
from align.reward.score import HEAD_FILE, NORMALISER, Normaliser, conversation_text, ending_where_read, score_texts


def load_reward_data(config: RewardConfig) -> tuple[list[Group], list[Group], list[Group]]:
    """(train, eval, reference) groups; every file is validated before a model loads."""
    data = config.data
    groups = load_groups(data.train)
    if data.eval:
        train_groups, eval_groups = groups, load_groups(data.eval)
    else:
        train_groups, eval_groups = split_groups(groups, data.eval_fraction, config.training.seed)
    if not train_groups:
        raise DataError([f"{data.train}: no training groups left after holding out the eval set"])
    reference = load_groups(data.reference) if data.reference else (eval_groups or train_groups)
    return train_groups, eval_groups, reference


def train(config: RewardConfig, *, overwrite: bool = False, resume: bool = False,
          allow_changes: bool = False) -> dict[str, Any]:
    """Train into `config.out_dir`; returns the figures written to metrics.json."""
    groups = load_reward_data(config)
    distributed.check_global_batch({"training.batch_size": config.training.batch_size}, distributed.world().size)
    modeling.check_model(config.model)
    memory.check_fits(config, modeling.resolve_model_path(config.model.name))
    out = rundir.StageDir(config.out_dir)
    advice = guards.memory_advice(config, lower=("training.max_tokens_per_batch", "training.batch_size", "data.max_length",
                                                 "training.eval_batch_size"),
                                  raise_=("training.grad_accum",), enable=("training.gradient_checkpointing",))
    with distributed.stage_run(out, dump_yaml(config), overwrite=overwrite, resume=resume,
                               allow_changes=allow_changes) as world:
        with guards.explain_out_of_memory("the reward model", advice):
            return _train(config, out, *groups, world=world, resume=resume)


def score_groups(model: Any, batcher: micro_batches.Batcher, groups: list[Group], batch_size: int,
                 world: distributed.World = distributed.World()) -> list[list[float]]:
    """Rewards of every completion of every group, without gradients; each process scores its share.

    `model` is the bare model, not a DDP wrapper: DDP syncs buffers in every forward, and the
    processes' shares need not take the same number of forwards."""
    texts = [conversation_text(batcher.tokenizer, g.prompt, c) for g in groups for c in g.completions]
    share = -(-len(texts) // world.size)
    mine = texts[world.rank * share:(world.rank + 1) * share]
    rewards = score_texts(model, batcher.tokenizer, mine, batcher.max_length, batch_size, batcher.max_tokens)
    return regroup(groups, world.gather(rewards.to(next(model.parameters()).device)).tolist())


# what fixes which steps are whose in an ensemble: member m trains steps m x S + 1 .. (m + 1) x S
MEMBER_LAYOUT = ("training.ensemble", "training.epochs", "training.batch_size", "training.grad_accum",
                 "training.bootstrap", "training.seed")


def _train(config: RewardConfig, out: rundir.StageDir, train_groups: list[Group], eval_groups: list[Group],
           reference: list[Group], *, world: distributed.World, resume: bool) -> dict[str, Any]:
    """Train each member (one, or `training.ensemble`), then the ensemble's own figures; returns metrics.json's."""
    moved = sorted(k for k in out.resumed_with_changes if k in MEMBER_LAYOUT or k.startswith("data."))
    if moved and (config.training.ensemble > 1 or "training.ensemble" in moved):
        raise AlignError(f"{out.path}: an ensemble resumed with other {', '.join(moved)} would put its members' steps "
                         f"where the checkpoints do not have them; resume with the checkpoint's settings, or start "
                         f"again with --overwrite")
    wandb_run = tracking.start_wandb(config.tracking, out.path, "reward", to_dict(config)) if world.is_main else None
    metrics = tracking.MetricsLog(out.path, wandb_run, write=world.is_main)
    newest = out.newest_checkpoint() if resume else None
    count = config.training.ensemble
    # (eval rewards, normaliser) of each member; those finished before an interruption read from their folders
    done = [members.read_member(out.path, m) if count > 1 and resume else None for m in range(count)]
    if newest is not None or any(done):
        metrics.final = out.metrics()  # the figures logged up to the checkpoint, or of the finished members
    for member in range(count):
        if done[member] is None:
            restart = newest if newest is not None and checkpoint.state_of(newest).get("member", 0) == member else None
            done[member] = _train_member(config, member, out, metrics, train_groups, eval_groups, reference,
                                         world, restart)
    eval_rewards, normalisers = zip(*done)
    if count > 1 and eval_groups:
        metrics.update(members.figures(eval_groups, eval_rewards, normalisers))
    if count > 1 and world.is_main:
        members.write_manifest(out.path, count)  # the ensemble is whole: readers may load it
    metrics.update({"data/train_groups": len(train_groups), "data/eval_groups": len(eval_groups),
                    **tracking.peak_memory_mb()})
    if world.is_main:
        model_card.describe_outputs(out.path, "reward", config, metrics.final, reward=True)
        for member in range(count if count > 1 else 0):  # each member's card with its own figures
            prefix = members.prefix(member)
            own = {k[len(prefix):]: v for k, v in metrics.final.items() if k.startswith(prefix)}
            model_card.describe_weights(members.member_dir(out.path, member), "reward", config, own, reward=True)
    if wandb_run is not None:
        wandb_run.finish()
    return metrics.final


def _train_member(config: RewardConfig, member: int, out: rundir.StageDir, metrics: tracking.MetricsLog,
                  train_groups: list[Group], eval_groups: list[Group], reference: list[Group],
                  world: distributed.World, restart: Path | None) -> tuple[list[list[float]], Normaliser]:
    """Build the model, restore `restart` or score the eval set untrained (the first member), train, then
    score, fit the normaliser and save; returns the member's eval rewards and normaliser."""
    t = config.training
    learner = _build_learner(config, len(train_groups), member)
    if learner.accelerator.device.type == "cpu":
        heap.large_buffers_from_mmap()
    state = _restore_or_evaluate_before(config, learner, out, metrics, eval_groups, world, member, restart)
    prefix = members.prefix(member) if t.ensemble > 1 else ""
    metrics.update({"params/trainable": learner.trainable, "params/total": learner.total})

    started = time.time()
    groups = members.bootstrap(train_groups, t.seed, member) if t.bootstrap and t.ensemble > 1 else train_groups
    state = _train_batches(config, learner, out, metrics, groups, state, world, member)
    runtime = time.time() - started
    steps = state["step"] - member * learner.total_steps
    figures: dict[str, Any] = {"train/steps": steps, "train/runtime_s": round(runtime, 2),
                               "train/sec_per_step": round(runtime / max(1, steps), 3)}
    eval_rewards, normaliser, scored = _evaluate_and_save(config, learner, out, eval_groups, reference, state, world,
                                                          member)
    figures.update(scored)
    metrics.update({prefix + k: v for k, v in figures.items()})
    del learner
    heap.release()  # the next member loads its own model
    return eval_rewards, normaliser


@dataclass
class _Learner:
    """The model under training and what steps it, built once by _build_learner."""

    accelerator: Any
    tokenizer: Any
    model: Any  # prepared by accelerate: DDP-wrapped under several processes
    optimizer: Any
    scheduler: Any
    batcher: micro_batches.Batcher
    batches_per_epoch: int
    total_batches: int
    total_steps: int  # optimiser steps: batches / grad_accum
    trainable: int  # parameters
    total: int


def _build_learner(config: RewardConfig, train_groups: int, member: int = 0) -> _Learner:
    """The base model with its score head and tuning (initialised from seed + member), AdamW and the
    learning-rate schedule over every step."""
    import torch
    from accelerate import Accelerator
    from transformers import get_scheduler

    from align.core.fused_lora import fuse_lora

    t = config.training
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), gradient_accumulation_steps=t.grad_accum,
                              mixed_precision="bf16" if modeling.bf16_is_fast() else "no")
    torch.manual_seed(t.seed + member)
    tokenizer = modeling.load_tokenizer(modeling.resolve_model_path(config.model.name), config.model.trust_remote_code)
    model = modeling.load_base(config.model, tokenizer, head="score")
    model = modeling.attach_tuning(model, config.model, task_type="SEQ_CLS", gradient_checkpointing=t.gradient_checkpointing)
    fuse_lora(model, t.backward_precision)
    trainable, total = modeling.count_parameters(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.learning_rate,
                                  weight_decay=t.weight_decay)
    batches_per_epoch = math.ceil(train_groups / t.batch_size)
    total_batches = math.ceil(t.epochs * batches_per_epoch)
    total_steps = math.ceil(total_batches / t.grad_accum)
    scheduler = get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=round(t.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    batcher = micro_batches.Batcher(tokenizer, config.data.max_length, t.use_margin, t.max_tokens_per_batch)
    return _Learner(accelerator, tokenizer, model, optimizer, scheduler, batcher, batches_per_epoch, total_batches,
                    total_steps, trainable, total)


def _restore_or_evaluate_before(config: RewardConfig, learner: _Learner, out: rundir.StageDir,
                                metrics: tracking.MetricsLog, eval_groups: list[Group], world: distributed.World,
                                member: int, restart: Path | None) -> dict[str, int]:
    """The state to go on from: `restart`'s when resuming (weights, optimiser, schedule and the figures logged
    up to it restored), else the member's first step, after scoring the eval set untrained (eval_before/*,
    the first member only). Steps count on across members: member m's are m x steps + 1 onwards."""
    t = config.training
    unwrapped = learner.accelerator.unwrap_model(learner.model)
    if restart is not None:
        state = checkpoint.load_checkpoint(restart, checkpoint.trainable(unwrapped), learner.optimizer)
        learner.scheduler.load_state_dict(state.pop("scheduler"))
        checkpoint.apply_settings(learner.optimizer, learner.scheduler, t.learning_rate, t.weight_decay)
        metrics.truncate_after(state["step"])
        return {"member": member, **state}
    first = member * learner.total_steps
    if member > 0:
        metrics.truncate_after(first)  # what this member logged before a kill that left it no checkpoint
    if eval_groups and member == 0:
        before = ranking_metrics(eval_groups, score_groups(unwrapped, learner.batcher, eval_groups, t.eval_batch_size, world))
        metrics.update({k.replace("eval/", "eval_before/"): v for k, v in before.items() if "calibration" not in k})
    return {"step": first, "batch": 0, "member": member}


def _train_batches(config: RewardConfig, learner: _Learner, out: rundir.StageDir, metrics: tracking.MetricsLog,
                   train_groups: list[Group], state: dict[str, int], world: distributed.World,
                   member: int = 0) -> dict[str, int]:
    """Every batch from state["batch"] on, in the order an unbroken run takes them; logs every
    logging_steps steps, checkpoints every save_steps; returns the state after the last step."""
    import torch
    from tqdm import tqdm

    t = config.training
    learner.model.train()
    window = []
    first, last = member * learner.total_steps, (member + 1) * learner.total_steps
    name = f"reward model {member + 1}/{t.ensemble}" if t.ensemble > 1 else "reward model"
    progress = tqdm(total=learner.total_steps, initial=state["step"] - first, desc=name,
                    disable=not learner.accelerator.is_main_process)
    for b in range(state["batch"], learner.total_batches):
        epoch, index = divmod(b, learner.batches_per_epoch)
        # the same order on resume; each member its own (the first one's is a single model's)
        seed = t.seed + epoch if member == 0 else f"{t.seed} member {member} epoch {epoch}"
        order = random.Random(seed).sample(train_groups, len(train_groups))
        groups = order[index * t.batch_size:(index + 1) * t.batch_size]
        # the last batch closes its accumulation even when it is not full: total_steps counts that step
        closes = (b + 1) % t.grad_accum == 0 or b == learner.total_batches - 1
        part, grad_norm = _learn_from(groups, learner, out, state, t.max_grad_norm, world, closes)
        window.append(part)
        if not closes:
            continue
        learner.scheduler.step()
        progress.update(1)
        state = {"step": state["step"] + 1, "batch": b + 1, "member": member}
        # the last step too: a run shorter than logging_steps still leaves its curve
        if state["step"] % config.tracking.logging_steps == 0 or state["step"] == last:
            loss_sum, accuracy_sum = learner.accelerator.reduce(torch.stack(window).sum(0), "sum").tolist()
            metrics.log(state["step"], {
                "train/loss": loss_sum / len(window),
                "train/accuracy": accuracy_sum / len(window),
                "train/grad_norm": float(grad_norm) if grad_norm is not None else None,
                "train/learning_rate": learner.scheduler.get_last_lr()[0],
                "train/epoch": round(b / learner.batches_per_epoch, 4),
                **({"train/member": member} if t.ensemble > 1 else {}),
            })
            window = []
        # an ensemble's member also at its last step, so a kill in the next member resumes after it
        ends_member = t.ensemble > 1 and state["step"] == last
        if (state["step"] % t.save_steps == 0 or ends_member) and learner.accelerator.is_main_process:
            _save_checkpoint(out, learner, state)
    progress.close()
    return state


def _learn_from(groups: list[Group], learner: _Learner, out: rundir.StageDir, state: dict[str, int],
                max_grad_norm: float, world: distributed.World, closes: bool) -> tuple[Any, Any]:
    """One batch's forward and backward, and the optimiser step when it `closes` an accumulation (processes
    sync their gradients then only). Returns this process's part of the batch's (loss, pair accuracy), and
    the gradient norm when the optimiser stepped."""
    import torch

    accelerator, model = learner.accelerator, learner.model
    mine = groups[world.rank::world.size]
    # DDP averages the processes' gradients; weighting each process's mean loss by its share of
    # the batch's groups makes that the batch mean, also for a last batch that does not split
    # evenly (a process with no group runs one at weight 0 to join the all-reduce)
    weight = len(mine) * world.size / len(groups)
    batch = learner.batcher(mine or groups[:1])
    with contextlib.nullcontext() if closes else accelerator.no_sync(model):
        rewards, loss = micro_batches.backward(accelerator, model, batch, weight)  # accelerator.backward divides by grad_accum
    grad_norm = None
    if closes:
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        if not torch.isfinite(grad_norm):  # the same on every process: gradients are synced
            _halt(out, learner, state,
                  f"stopped at step {state['step'] + 1}: the loss or its gradient is not finite (loss {loss.item():.4g})")
        learner.optimizer.step()
        learner.optimizer.zero_grad()
    diff = rewards[batch["pairs"][:, 0]] - rewards[batch["pairs"][:, 1]]
    pairs_in_batch = sum(len(g.pairs) for g in groups)
    # this process's part of the batch's loss and pair accuracy; summed across processes at logging
    part = torch.stack([loss.detach() * weight / world.size,
                        (diff > 0).float().sum() * (1.0 if mine else 0.0) / pairs_in_batch])
    return part, grad_norm


def _evaluate_and_save(config: RewardConfig, learner: _Learner, out: rundir.StageDir, eval_groups: list[Group],
                       reference: list[Group], state: dict[str, int], world: distributed.World,
                       member: int = 0) -> tuple[list[list[float]], Normaliser, dict[str, Any]]:
    """The trained model's eval rewards, its normaliser fitted on the reference set and its ranking figures;
    a reward collapsed to a constant halts; the main process saves the model with its normaliser (an
    ensemble's member in its own folder, with its eval rewards)."""
    t = config.training
    unwrapped = learner.accelerator.unwrap_model(learner.model)
    figures: dict[str, Any] = {}
    eval_rewards = score_groups(unwrapped, learner.batcher, eval_groups, t.eval_batch_size, world) if eval_groups else []
    if eval_groups:
        figures.update(ranking_metrics(eval_groups, eval_rewards))
    # the reference set is the eval set unless the user named one: score it once
    reference_rewards = eval_rewards if reference is eval_groups else score_groups(unwrapped, learner.batcher, reference,
                                                                                   t.eval_batch_size, world)
    normaliser = Normaliser.fit([r for rs in reference_rewards for r in rs])
    if guards.collapsed([r for rs in reference_rewards for r in rs]):
        _halt(out, learner, state,
              f"gives every reference completion the same reward ({normaliser.mean:.6g}) after {state['step']} steps: "
              f"it has collapsed to a constant and would give PPO nothing to learn; lower training.learning_rate, "
              f"or check that the data's completions differ")
    length = length_fit(learner.tokenizer, reference, reference_rewards)
    figures.update({"normaliser/mean": normaliser.mean, "normaliser/std": normaliser.std,
                    **{f"normaliser/{k}": v for k, v in length.items()}})
    if learner.accelerator.is_main_process:
        if t.ensemble > 1:
            save_reward_model(unwrapped, learner.tokenizer, config, out, normaliser,
                              members.member_dir(out.path, member), eval_rewards, length)
        else:
            save_reward_model(unwrapped, learner.tokenizer, config, out, normaliser, length=length)
    return eval_rewards, normaliser, figures


def length_fit(tokenizer: Any, groups: list[Group], rewards: list[list[float]]) -> dict[str, float]:
    """How the reward follows completion length over the reference set: the least-squares slope of the raw
    reward on the completion's tokens, in normalised units per 100 tokens, and their correlation. A model that
    pays for length shows it here before PPO learns to write long (reward.length_penalty counters it)."""
    texts = [c for g in groups for c in g.completions]
    lengths = [float(len(ids)) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    flat = [r for rs in rewards for r in rs]
    std_len, std_r = statistics.pstdev(lengths), statistics.pstdev(flat)
    if std_len == 0 or std_r == 0:
        return {}
    corr = statistics.correlation(lengths, flat)
    # the slope of the normalised reward, (cov / var_len) / std_r, is corr / std_len
    return {"length_slope_per_100_tokens": 100 * corr / std_len, "length_corr": corr}


def _save_checkpoint(out: rundir.StageDir, learner: _Learner, state: dict[str, int]) -> None:
    checkpoint.save_checkpoint(out.checkpoints, checkpoint.trainable(learner.accelerator.unwrap_model(learner.model)),
                               learner.optimizer, {**state, "scheduler": learner.scheduler.state_dict()})


def _halt(out: rundir.StageDir, learner: _Learner, state: dict[str, int], problem: str) -> None:
    """Save the state of the last finished step (the optimiser has not stepped since) and stop."""
    path = out.checkpoints / f"checkpoint-{state['step']}"
    if learner.accelerator.is_main_process and not rundir.checkpoint_complete(path):
        _save_checkpoint(out, learner, state)
    raise TrainingHalted(f"the reward model {problem}. The state after step {state['step']} is in {path}; "
                         f"`--resume` continues from there")


def save_reward_model(model: Any, tokenizer: Any, config: RewardConfig, out: rundir.StageDir,
                      normaliser: Normaliser, final: Path | None = None,
                      eval_rewards: list[list[float]] | None = None, length: dict[str, float] | None = None) -> Path:
    """adapter/ (LoRA + head), model/score.safetensors (head only) or model/ (full), with the
    tokenizer, the base record and the normaliser, so `RewardModel.load` needs nothing else; an
    ensemble's member goes to `final` instead, with the rewards it gave the eval set."""
    from safetensors.torch import save_file

    tuning = config.model.tuning
    final = final or out.file(rundir.ADAPTER if tuning in ("lora", "prompt_tuning") else rundir.MODEL)
    with rundir.replace_dir(final) as target:
        if tuning == "head":
            save_file({k: v.detach().cpu().contiguous() for k, v in model.score.state_dict().items()}, target / HEAD_FILE)
        else:
            model.save_pretrained(target)
        template = tokenizer.chat_template
        if template:  # read back by align (conversation_text strips the same newline) and by anyone else alike
            tokenizer.chat_template = ending_where_read(template)
        try:
            tokenizer.save_pretrained(target)
        finally:
            tokenizer.chat_template = template
        modeling.save_base_record(target, config.model)
        if eval_rewards is not None:
            rundir.write_json_atomic(target / members.EVAL_REWARDS, eval_rewards)
        # mean and std are what readers normalise with; the length fit says how the reward follows length
        rundir.write_json_atomic(target / NORMALISER, {"mean": normaliser.mean, "std": normaliser.std, **(length or {})})
    return final
