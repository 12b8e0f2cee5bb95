"""Stage 3: PPO against the reward model under a KL leash, in paper order:

    for each update:  rollout (no grad)  ->  KL-shaped rewards, GAE, whitening
                      -> ppo_epochs x shuffled mini-batches of clipped policy + value loss
                      -> KL controller, logs (TRL's names), guards, eval, samples, checkpoint

Under `accelerate launch` each of n processes rolls out its 1/n of the global batch; the rollouts
are joined on every process, so advantages, whitening, the KL controller and the logged figures
see the global batch; each process then takes its 1/n of every mini-batch and the gradients are
summed across processes. Only the main process writes files.

Beside it: batches.py (which prompts, whose share), heldout.py (the held-out evaluation),
health.py (the guards, and undoing an unhealthy update), ptx.py (PPO-ptx), outputs.py (samples,
the aligned adapter).
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import torch

from align.core import checkpoint, distributed, guards, heap, model_card, modeling, rundir, tracking
from align.core.config import dump_yaml, to_dict
from align.core.errors import AlignError, DataError, TrainingHalted
from align.core.records import load_records
from align.ppo import advantages as adv
from align.ppo import health, memory, outputs
from align.ppo.batches import batch_of_update, encode_prompts, micro_batches, shard, unpadded_columns
from align.ppo.config import PPOConfig, PPOSettings
from align.ppo.health import Unhealthy
from align.ppo.heldout import HeldOut
from align.ppo.losses import entropy_from_logits, logprobs_of, policy_loss, value_loss
from align.ppo.models import PolicyStack
from align.ppo.ptx import PtxData
from align.ppo.rollout import Rollout, Sampling, function_scorer, gather_rollout, make_rollout, reward_scorer
from align.reward.ensemble import disagreement

__all__ = ["MiniBatchStats", "PPOTrainer", "TrainingHalted", "Unhealthy", "check_inputs", "check_shards", "train"]


def ensemble_stats(member_scores: torch.Tensor | None) -> dict[str, float]:
    """A reward ensemble's members on a rollout: each one's mean normalised score, and their disagreement
    (the members' std per response, averaged): where it grows, the policy is finding what they dispute."""
    if member_scores is None:
        return {}
    return {"objective/reward_disagreement": disagreement(member_scores.T).mean().item(),
            **{f"objective/member{k}_scores": v for k, v in enumerate(member_scores.mean(0).tolist())}}


def padded_figures(stats: "MiniBatchStats", fill: float) -> dict[str, float]:
    """approxkl and the ratio as TRL and the N+ recipe average them, over every (row, column) of the mini-batch's
    padded responses, where log r = 0 and r = 1: ours (real tokens only) times `fill`, the real tokens' share
    of those cells. The health ranges their logs give (DESIGN.md) read against these."""
    return {"policy/approxkl_padded_avg": stats.policy_approxkl_avg * fill,
            "val/ratio_padded": 1 + (stats.val_ratio - 1) * fill}


class MiniBatchStats(NamedTuple):
    """A mini-batch's figures, each a mean over all of its tokens: every micro-batch on every process
    gives its mean times its share of the mini-batch, and optimise() sums the shares. A field
    `group_name` is logged as `group/name` (TRL's names); the nonfinite_ flags stop the run instead.
    0-dim tensors out of a micro-batch, floats once summed."""

    loss_policy_avg: torch.Tensor | float  # clipped surrogate loss L^CLIP
    policy_approxkl_avg: torch.Tensor | float  # ½·E[(log r)²]
    policy_clipfrac_avg: torch.Tensor | float  # share of tokens where the clipped term was taken
    val_ratio: torch.Tensor | float  # E[π_θ / π_old]; max and min over mini-batches logged too
    policy_entropy_avg: torch.Tensor | float  # entropy of π_θ at the sampling temperature
    loss_value_avg: torch.Tensor | float  # clipped value loss L^VF
    val_clipfrac_avg: torch.Tensor | float  # share of tokens where the clipped value was taken
    loss_ptx_avg: torch.Tensor | float  # PPO-ptx language-modelling loss; logged only with training.ptx_coef > 0
    nonfinite_policy_loss: torch.Tensor | float  # > 0: some micro-batch's L^CLIP is not finite
    nonfinite_value_loss: torch.Tensor | float  # > 0: some micro-batch's L^VF is not finite

    def stacked(self) -> torch.Tensor:
        """(fields,) float32, for one sum over micro-batches and one all-reduce over processes."""
        return torch.stack([x.detach().float() for x in self])

    @classmethod
    def unstacked(cls, sums: torch.Tensor) -> MiniBatchStats:
        return cls(*sums.tolist())

    def logged(self, ptx: bool) -> dict[str, float]:
        return {name.replace("_", "/", 1): value for name, value in self._asdict().items()
                if not name.startswith("nonfinite_") and (ptx or name != "loss_ptx_avg")}


def train(config: PPOConfig, *, overwrite: bool = False, resume: bool = False,
          allow_changes: bool = False) -> dict[str, Any]:
    prompts = load_records(config.data.prompts, "prompts")
    eval_prompts = load_records(config.data.eval_prompts, "prompts")[: config.data.eval_size] if config.data.eval_prompts else []
    if len(prompts) < config.training.batch_size:
        raise DataError([f"{config.data.prompts}: {len(prompts)} prompts, fewer than training.batch_size={config.training.batch_size}"])
    if config.reward.model is None and config.reward.function is None:
        raise AlignError("set reward.model (an `align reward` output directory) or reward.function (module:function)")
    check_shards(config.training, distributed.world().size)
    check_inputs(config)
    memory.check_fits(config, modeling.resolve_model_path(config.model.name), distributed.world().size)
    out = rundir.StageDir(config.out_dir)
    advice = guards.memory_advice(config, lower=("training.max_tokens_per_batch", "training.mini_batch_size", "generation.max_new_tokens",
                                                 "data.max_prompt_length", "training.batch_size"), raise_=("training.grad_accum",),
                                  enable=("training.gradient_checkpointing",))
    with distributed.stage_run(out, dump_yaml(config), overwrite=overwrite, resume=resume,
                               allow_changes=allow_changes) as world:
        with guards.explain_out_of_memory("PPO", advice):
            return PPOTrainer(config, out, world).run(prompts, eval_prompts, resume=resume)


def check_inputs(config: PPOConfig) -> None:
    """The models, reward and PPO-ptx data exist: found before the output directory is written."""
    modeling.check_model(config.model, dropout_applies=False)  # PPO's LoRA dropout is off whatever is set
    if config.reward.function is not None:
        from align.core.callables import load_callable

        load_callable(config.reward.function)
    else:
        from align.reward import members

        members.check(config.reward.model)
    if config.data.eval_judge is not None:
        from align.core.callables import load_callable

        load_callable(config.data.eval_judge)
    if config.training.ptx_coef > 0:
        load_records(config.training.ptx_data, "instructions")


def check_shards(p: PPOSettings, processes: int) -> None:
    """batch_size and mini_batch_size are global: each process takes an equal share of both, and splits
    its share of a mini-batch into grad_accum micro-batches."""
    distributed.check_global_batch({"training.batch_size": p.batch_size, "training.mini_batch_size": p.mini_batch_size},
                                   processes, per_process={"training.mini_batch_size": ("training.grad_accum", p.grad_accum)})


class PPOTrainer:
    """The loop: rollout -> advantages -> ppo_epochs x mini-batches -> log, with guards, held-out
    evaluation, samples and checkpoints around each update."""

    def __init__(self, config: PPOConfig, out: rundir.StageDir, world: distributed.World = distributed.World()):
        self.config, self.out, self.world = config, out, world
        torch.manual_seed(config.training.seed)
        path = modeling.resolve_model_path(config.model.name)
        self.tokenizer = modeling.load_tokenizer(path, config.model.trust_remote_code)
        self.tokenizer.padding_side = "left"  # generation continues from the prompt's end
        self.stack = PolicyStack(config.model, self.tokenizer,
                                 config.reward.model if config.reward.function is None else None,
                                 gradient_checkpointing=config.training.gradient_checkpointing,
                                 ensemble_objective=config.reward.ensemble_objective,
                                 uwo_lambda=config.reward.uwo_lambda,
                                 backward_precision=config.training.backward_precision)
        if self.stack.device.type == "cpu":  # freed KV caches and activations go back to the OS (core/heap.py)
            heap.large_buffers_from_mmap()
        p = config.training
        # every pass over rollouts cuts them alike: at most this many rows and max_tokens_per_batch tokens
        self.micro_rows = p.mini_batch_size // world.size // p.grad_accum
        self.score, self.normaliser = reward_scorer(config.reward, self.stack, self.tokenizer, p.max_tokens_per_batch)
        world.broadcast_(self.stack.trainable_parameters())  # one start, whatever each process drew
        # no weight decay: it would pull the adapters towards the base, not the reference (N+, cleanrl, TRL)
        # fused: one kernel over every adapter tensor (0.5 ms a step instead of 3 on the tiny model, 22 instead
        # of 73 on SmolLM2's adapters); the same update up to float rounding; TRL's default optimiser too
        self.optimizer = torch.optim.AdamW(self.stack.trainable_parameters(), lr=p.learning_rate, eps=p.adam_eps,
                                           weight_decay=0.0, fused=True)
        decay = (lambda u: 1 - u / p.updates) if p.lr_scheduler == "linear" else (lambda u: 1.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, decay)
        self.kl_ctl = (adv.AdaptiveKLController(p.kl_coef, p.target_kl, p.kl_horizon) if p.adaptive_kl
                       else adv.FixedKLController(p.kl_coef))
        eos = self.tokenizer.eos_token_id
        self.eos_ids = sorted({eos} | set(_as_list(getattr(self.stack.peft.generation_config, "eos_token_id", None))))
        g = config.generation
        self.sampling = Sampling(g.max_new_tokens, g.temperature, g.top_p, g.logprobs_from_sampling, g.working_copy)
        self.ptx = PtxData(p.ptx_data, self.tokenizer, config.data.max_prompt_length, world) if p.ptx_coef > 0 else None
        self.heldout = HeldOut(self.stack, self._encode_prompts, self.sampling, self.eos_ids, self.tokenizer.pad_token_id,
                               self.score, self.normaliser, world, config.data.eval_samples,
                               max_generated=p.batch_size // world.size, max_tokens=p.max_tokens_per_batch,
                               max_rows=self.micro_rows, judge=self._judge(config.data.eval_judge))
        wandb_run = tracking.start_wandb(config.tracking, out.path, "ppo", to_dict(config)) if world.is_main else None
        self.metrics = tracking.MetricsLog(out.path, wandb_run, write=world.is_main)
        self.constant_reward = guards.ConstantReward(config.guards.constant_reward_updates)

    def _judge(self, spec: str | None) -> Any:
        if spec is None:
            return None
        from align.core.callables import load_callable

        return function_scorer(load_callable(spec), self.tokenizer, spec)

    # ---------------------------------------------------------------- the loop

    def run(self, prompts: list, eval_prompts: list, *, resume: bool) -> dict[str, Any]:
        from tqdm import tqdm

        c, p = self.config, self.config.training
        start = self._resume() if resume else 0
        if start == 0 and eval_prompts:
            self.metrics.update({f"eval_before/{k}": v for k, v in self.evaluate(eval_prompts).items()})
        for update in tqdm(range(start, p.updates), initial=start, total=p.updates, desc="PPO updates",
                           disable=not self.world.is_main):
            batch = batch_of_update(prompts, update, p.batch_size, p.seed)
            # the sampling noise of an update depends on (seed, update, process) alone: a resumed run
            # draws what an uninterrupted one would, and no two processes draw the same
            torch.manual_seed(p.seed + update * self.world.size + self.world.rank)
            before = health.snapshot(self.stack, self.optimizer)
            try:
                stats, rollout = self.step(batch, update)
            except Unhealthy as e:
                health.restore(self.stack, self.optimizer, before)
                self._checkpoint(update)
                raise TrainingHalted(f"PPO stopped at update {update + 1}: {e}; its changes were undone. "
                                     f"Checkpoint of update {update} saved in {self.out.checkpoints}") from None
            self.metrics.log(update + 1, stats)
            self._guard(stats, update + 1, self.constant_reward.update(rollout.raw_scores.tolist()))
            if c.training.sample_steps and (update + 1) % c.training.sample_steps == 0 and self.world.is_main:
                outputs.write_samples(self.out.file(outputs.SAMPLES), update + 1, batch, rollout, self.tokenizer)
            # the last update's evaluation is the final one, below, run once
            if c.training.eval_steps and (update + 1) % c.training.eval_steps == 0 and eval_prompts and update + 1 < p.updates:
                self.metrics.log(update + 1, {f"eval/{k}": v for k, v in self.evaluate(eval_prompts).items()})
            if (update + 1) % c.training.save_steps == 0 or update + 1 == p.updates:
                self._checkpoint(update + 1)
        final = {f"eval/{k}": v for k, v in self.evaluate(eval_prompts).items()} if eval_prompts else {}
        if final:
            self.metrics.log(p.updates, final)
        if self.world.is_main:
            outputs.save_policy(self.out, self.stack, self.tokenizer, c.model)
        self.metrics.update({**final, "train/updates": p.updates, **tracking.peak_memory_mb()})
        if self.world.is_main:
            model_card.describe_outputs(self.out.path, "ppo", c, self.metrics.final)
        if self.metrics.wandb_run is not None:
            self.metrics.wandb_run.finish()
        return self.metrics.final

    def step(self, prompts: list, update: int = 0) -> tuple[dict[str, float], Rollout]:
        """One PPO update of the global batch `prompts`: rollout, advantages, optimisation; returns its
        logged figures and the (global) rollout."""
        p = self.config.training
        started, timings = time.perf_counter(), {}
        rollout = self._rollout(prompts, timings)
        health.check_scores(rollout.raw_scores)
        kl, advantages, returns = self._advantages(rollout)
        train_start = time.perf_counter()
        update_stats = self.optimise(rollout, advantages, returns, update)
        timings["time/training_s"] = time.perf_counter() - train_start
        self.scheduler.step()
        mask = rollout.response_mask.float()
        mean_kl = kl.sum(1).mean().item()
        beta = self.kl_ctl.value  # the β these rewards were shaped with
        non_score = (-beta * kl).sum(1).mean().item()
        self.kl_ctl.update(mean_kl, p.batch_size)
        elapsed = time.perf_counter() - started
        n_tokens = int(rollout.response_mask.sum())
        return {
            "objective/kl": mean_kl,
            "objective/entropy": (-rollout.logprobs * mask).sum(1).mean().item(),
            "objective/non_score_reward": non_score,
            "objective/rlhf_reward": rollout.scores.mean().item() + non_score,
            "objective/scores": rollout.scores.mean().item(),
            "objective/raw_scores": rollout.raw_scores.mean().item(),
            "objective/no_eos_frac": 1 - rollout.has_eos.float().mean().item(),
            "objective/response_length": mask.sum(1).mean().item(),
            **ensemble_stats(rollout.member_scores),
            **update_stats,
            "lr": self.scheduler.get_last_lr()[0],
            "beta": beta,
            "eps": p.batch_size / elapsed,
            "time/update_s": elapsed,
            "tokens_per_s": n_tokens / elapsed,
            **timings,
        }, rollout

    def _rollout(self, prompts: list, timings: dict[str, float]) -> Rollout:
        """This process's share of the global batch sampled and scored, then every process's joined."""
        mine = shard(prompts, self.world)
        query_ids, query_mask = self._encode_prompts(mine)
        rollout = make_rollout(self.stack, query_ids, query_mask, [list(r.messages) for r in mine], self.sampling,
                               self.score, self.normaliser, self.eos_ids, self.tokenizer.pad_token_id,
                               self.config.reward.no_eos_penalty, timings,
                               max_tokens=self.config.training.max_tokens_per_batch, max_rows=self.micro_rows,
                               length_penalty=self.config.reward.length_penalty)
        return gather_rollout(rollout, self.world, self.tokenizer.pad_token_id)

    @torch.no_grad()
    def _advantages(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per token (B, T): the KL to the reference, and the whitened GAE advantages and the returns of
        the rewards it shapes with the controller's β (advantages.py)."""
        p, mask = self.config.training, rollout.response_mask.float()
        kl = adv.kl_per_token(rollout.logprobs, rollout.ref_logprobs, p.kl_estimator) * mask  # (B, T)
        rewards = adv.shaped_rewards(rollout.scores, kl, mask, self.kl_ctl.value)
        if p.whiten_rewards:
            rewards = adv.whiten(rewards, mask, shift_mean=False)
        advantages, returns = adv.gae(rewards, rollout.values, mask, p.gamma, p.lam)
        return kl, adv.whiten(advantages, mask), returns

    def optimise(self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor, update: int) -> dict[str, float]:
        """ppo_epochs passes of shuffled mini-batches; the clipped losses of losses.py.

        The losses are token means over the whole mini-batch, whichever micro-batch or process holds
        the tokens, and gradients are summed across processes: the step is the one a single process
        takes on that mini-batch, so grad_accum, max_tokens_per_batch and the number of processes change
        memory, not maths. Processes may cut their shares into different numbers of micro-batches (by
        the token budget): no collective step runs inside the micro-batch loop, only the one sum per
        optimiser step after it, which every process reaches once per mini-batch.
        """
        p, world = self.config.training, self.world
        mask = rollout.response_mask.float()
        per_process = p.mini_batch_size // world.size
        params = self.stack.trainable_parameters()
        shuffle = torch.Generator().manual_seed(p.seed + update)  # the same mini-batches on every process
        lengths = (rollout.query_mask.sum(1).cpu(), rollout.response_mask.sum(1).cpu())
        logs: dict[str, list[float]] = {}
        for _ in range(p.ppo_epochs):
            order = torch.randperm(p.batch_size, generator=shuffle)
            for mb_start in range(0, p.batch_size, p.mini_batch_size):
                minibatch = order[mb_start:mb_start + p.mini_batch_size]
                n_tokens = mask[minibatch].sum()
                mine = minibatch[world.rank * per_process:(world.rank + 1) * per_process]
                sums = sum(self._micro_step(rollout, advantages, returns, i, n_tokens, lengths).stacked()
                           for i in micro_batches(mine, lengths, self.micro_rows, p.max_tokens_per_batch))
                # not DDP: PolicyStack runs the policy and value adapters of one shared base in turn, and
                # peft flips requires_grad on every switch, which DDP's per-parameter hooks do not
                # follow; one all-reduce per optimiser step is what DDP with no_sync would send anyway
                grads = [q.grad if q.grad is not None else torch.zeros_like(q) for q in params]
                for q, g in zip(params, grads):
                    q.grad = g
                world.sum_([*grads, sums])
                stats = MiniBatchStats.unstacked(sums)
                if stats.nonfinite_policy_loss:
                    raise Unhealthy("the policy loss is not finite")
                if stats.nonfinite_value_loss:
                    raise Unhealthy("the value loss is not finite")
                grad_norm = torch.nn.utils.clip_grad_norm_(params, p.max_grad_norm)
                if not torch.isfinite(grad_norm):
                    raise Unhealthy("the gradient norm is not finite")
                _append(logs, {**stats.logged(ptx=self.ptx is not None), "policy/grad_norm": grad_norm,
                               **padded_figures(stats, float(n_tokens) / (len(minibatch) * mask.shape[1]))})
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                heap.after_step(self.stack.device)
        out = {k: sum(v) / len(v) for k, v in logs.items()}
        out["val/ratio_max"] = max(logs["val/ratio"])
        out["val/ratio_min"] = min(logs["val/ratio"])
        return out

    def _micro_step(self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor, i: torch.Tensor,
                    n_tokens: torch.Tensor, lengths: tuple[torch.Tensor, torch.Tensor]) -> MiniBatchStats:
        """Backward of micro-batch i's share of its mini-batch's loss; returns its share of the figures.

        The mini-batch's loss sums, over the micro-batches of every process, with N the mini-batch's
        tokens, n = mask.sum() of them in this micro-batch, and len(i) of its mini_batch_size sequences:

            L = Σ [ n/N · L^CLIP  +  ptx_coef · len(i)/mini_batch_size · L^PTX  +  vf_coef · n/N · L^VF ]

        in three backward calls (two without PPO-ptx), one after each forward pass: the ptx pass reads
        other texts and the value pass runs another adapter on the shared base, so each graph (the
        policy's holds (micro, T, V) logits) is freed before the next pass builds its own; memory holds
        one pass at a time, and .grad sums the three into ∇L.

        The micro-batch runs at its own width (unpadded_columns), not the rollout's: prompts and
        responses of real data differ in length far more than the demo's."""
        p, temperature = self.config.training, self.sampling.temperature
        seq, resp = unpadded_columns(*lengths, i, rollout.query_ids.shape[1])
        ids, attn, mask = rollout.input_ids[i, seq], rollout.attention_mask[i, seq], rollout.response_mask[i, resp].float()
        T = mask.shape[1]
        share = mask.sum() / n_tokens
        logits = self.stack.policy_logits(ids, attn, T)
        new_logprobs = logprobs_of(logits, rollout.response_ids[i, resp], temperature)
        pg = policy_loss(new_logprobs, rollout.logprobs[i, resp], advantages[i, resp], mask, p.cliprange)
        with torch.no_grad():
            entropy = adv.masked_mean(entropy_from_logits(logits.float() / temperature), mask)
        del logits  # (micro, T, V) need not outlive the backward
        (pg.loss * share).backward()
        ptx = torch.zeros((), device=ids.device)
        if self.ptx is not None:
            # each process's ptx mean counts by its share of the mini-batch's sequences
            ptx = self.ptx.loss(self.stack, len(i)) * (len(i) / p.mini_batch_size)
            (p.ptx_coef * ptx).backward()
        values = self.stack.values(ids, attn, T)
        vf = value_loss(values, rollout.values[i, resp], returns[i, resp], mask, p.cliprange_value)
        (p.vf_coef * vf.loss * share).backward()
        return MiniBatchStats(
            loss_policy_avg=pg.loss * share, policy_approxkl_avg=pg.approxkl * share,
            policy_clipfrac_avg=pg.clipfrac * share, val_ratio=pg.ratio * share, policy_entropy_avg=entropy * share,
            loss_value_avg=vf.loss * share, val_clipfrac_avg=vf.clipfrac * share, loss_ptx_avg=ptx,
            nonfinite_policy_loss=~torch.isfinite(pg.loss), nonfinite_value_loss=~torch.isfinite(vf.loss))

    # ---------------------------------------------------------------- around the loop

    def evaluate(self, prompts: list) -> dict[str, float]:
        """The held-out figures (heldout.py): reward, KL to the reference, length, no-EOS share."""
        return self.heldout(prompts)

    def _encode_prompts(self, prompts: list) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_prompts(self.tokenizer, prompts, self.config.data.max_prompt_length, self.stack.device)

    def _guard(self, stats: dict[str, float], update: int, constant_reward: str | None = None) -> None:
        problem = health.problem(stats, self.config.guards, constant_reward)
        if problem:
            # kept for inspection under a name --resume does not pick: resume starts from the last healthy one
            self._checkpoint(update, name=f"halted-update-{update}", require_finite=False)
            raise TrainingHalted(f"PPO stopped at update {update}: {problem}. Its state is in "
                                 f"{self.out.checkpoints / f'halted-update-{update}'}; --resume starts from the last "
                                 f"periodic checkpoint")

    def _checkpoint(self, update: int, name: str | None = None, require_finite: bool = True) -> None:
        if not self.world.is_main:  # every process holds the same weights and optimiser state
            return
        state = {"step": update, "scheduler": self.scheduler.state_dict(), "kl_coef": self.kl_ctl.value,
                 "ptx_cursor": self.ptx.cursor if self.ptx is not None else 0}
        checkpoint.save_checkpoint(self.out.checkpoints, self.stack.named_trainable(), self.optimizer, state, name=name,
                                   require_finite=require_finite)

    def _resume(self) -> int:
        newest = self.out.newest_checkpoint()
        if newest is None:
            raise AlignError(f"{self.out.checkpoints}: no checkpoint to resume from")
        state = checkpoint.load_checkpoint(newest, self.stack.named_trainable(), self.optimizer)
        if self.ptx is not None:
            self.ptx.cursor = state.get("ptx_cursor", 0)
        self.scheduler.load_state_dict(state["scheduler"])
        checkpoint.apply_settings(self.optimizer, self.scheduler, self.config.training.learning_rate, 0.0)
        self.kl_ctl.value = state["kl_coef"]
        self.metrics.final = self.out.metrics()
        self.metrics.truncate_after(state["step"])
        if self.world.is_main:  # the updates after the checkpoint run again: keep their samples once
            rundir.truncate_jsonl(self.out.file(outputs.SAMPLES), "update", state["step"])
        return state["step"]


def _append(logs: dict[str, list[float]], values: dict[str, Any]) -> None:
    for key, value in values.items():
        logs.setdefault(key, []).append(float(value.detach()) if isinstance(value, torch.Tensor) else float(value))


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
