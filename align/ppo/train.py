"""Stage 3: PPO against the reward model under a KL leash, in paper order:

    for each update:  rollout (no grad)  ->  KL-shaped rewards, GAE, whitening
                      -> ppo_epochs x shuffled mini-batches of clipped policy + value loss
                      -> KL controller, logs (TRL's names), guards, eval, samples, checkpoint

Under `accelerate launch` each of n processes rolls out its 1/n of the global batch; the rollouts
are joined on every process, so advantages, whitening, the KL controller and the logged figures
see the global batch; each process then takes its 1/n of every mini-batch and the gradients are
summed across processes. Only the main process writes files.
"""

from __future__ import annotations

import json
import math
import random
import time
from typing import Any

import torch

from align.core import checkpoint, distributed, guards, heap, modeling, rundir, tracking
from align.core.config import dump_yaml, to_dict
from align.core.errors import AlignError, DataError, TrainingHalted
from align.core.records import load_records
from align.ppo import advantages as adv
from align.ppo.config import PPOConfig, PPOSettings
from align.ppo.losses import entropy_from_logits, logprobs_of, policy_loss, value_loss
from align.ppo.models import PolicyStack
from align.ppo.rollout import (Rollout, Sampling, decode_responses, gather_rollout, make_rollout, micro_batches,
                               shared_base_scorer, text_scorer, unpadded_columns)

# what optimise() sums over a mini-batch's tokens on every process, in this order, then logs
MINIBATCH_STATS = ("loss/policy_avg", "policy/approxkl_avg", "policy/clipfrac_avg", "val/ratio", "policy/entropy_avg",
                   "loss/value_avg", "val/clipfrac_avg", "loss/ptx_avg", "nonfinite/policy_loss", "nonfinite/value_loss")


class Unhealthy(Exception):
    """Found before the weights change: the run stops with the last healthy state saved."""


def train(config: PPOConfig, *, overwrite: bool = False, resume: bool = False,
          allow_changes: bool = False) -> dict[str, Any]:
    prompts = load_records(config.data.prompts, "prompts")
    eval_prompts = load_records(config.data.eval_prompts, "prompts")[: config.data.eval_size] if config.data.eval_prompts else []
    if len(prompts) < config.ppo.batch_size:
        raise DataError([f"{config.data.prompts}: {len(prompts)} prompts, fewer than ppo.batch_size={config.ppo.batch_size}"])
    if config.reward.model is None and config.reward.function is None:
        raise AlignError("set reward.model (an `align reward` output directory) or reward.function (module:function)")
    check_shards(config.ppo, distributed.world().size)
    check_inputs(config)
    out = rundir.StageDir(config.out_dir)
    memory = guards.memory_advice(config, lower=("ppo.mini_batch_size", "sampling.max_new_tokens", "data.max_prompt_length",
                                                 "ppo.batch_size"), raise_=("ppo.grad_accum",))
    with distributed.stage_run(out, dump_yaml(config), overwrite=overwrite, resume=resume,
                               allow_changes=allow_changes) as world:
        with guards.explain_out_of_memory("PPO", memory):
            return PPOTrainer(config, out, world).run(prompts, eval_prompts, resume=resume)


def check_inputs(config: PPOConfig) -> None:
    """The models, reward and PPO-ptx data exist: found before the output directory is written."""
    modeling.check_model(config.model)
    if config.reward.function is not None:
        from align.core.callables import load_callable

        load_callable(config.reward.function)
    else:
        from reward.score import weights_dir

        weights_dir(config.reward.model)
    if config.ppo.ptx_coef > 0:
        load_records(config.ppo.ptx_data, "instructions")


def check_shards(p: PPOSettings, processes: int) -> None:
    """batch_size and mini_batch_size are global: each process takes an equal share of both."""
    if p.batch_size % processes or p.mini_batch_size % processes or (p.mini_batch_size // processes) % p.grad_accum:
        raise AlignError(f"ppo.batch_size={p.batch_size} and ppo.mini_batch_size={p.mini_batch_size} are global: "
                         f"under {processes} processes both must divide by {processes}, and mini_batch_size / "
                         f"{processes} by ppo.grad_accum={p.grad_accum}")


class PPOTrainer:
    def __init__(self, config: PPOConfig, out: rundir.StageDir, world: distributed.World = distributed.World()):
        self.config, self.out, self.world = config, out, world
        torch.manual_seed(config.ppo.seed)
        path = modeling.resolve_model_path(config.model.name)
        self.tokenizer = modeling.load_tokenizer(path, config.model.trust_remote_code)
        self.tokenizer.padding_side = "left"  # generation continues from the prompt's end
        use_model = config.reward.function is None
        self.stack = PolicyStack(config.model, self.tokenizer, config.reward.model if use_model else None,
                                 gradient_checkpointing=config.ppo.gradient_checkpointing)
        if not use_model:
            from align.core.callables import load_callable
            from align.ppo.rollout import function_scorer

            self.normaliser, self.score = (lambda raw: raw), function_scorer(load_callable(config.reward.function),
                                                                             self.tokenizer, config.reward.function)
        elif self.stack.shares_reward:
            self.normaliser, self.score = self.stack.normaliser, shared_base_scorer(self.stack)
        else:
            from reward.score import RewardModel

            reward_model = RewardModel.load(config.reward.model)
            self.normaliser, self.score = reward_model.normaliser, text_scorer(reward_model, self.tokenizer)
        if not config.reward.normalise and use_model:
            self.normaliser = lambda raw: raw
        world.broadcast_(self.stack.trainable_parameters())  # one start, whatever each process drew
        p = config.ppo
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
        self.sampling = Sampling(config.sampling.max_new_tokens, config.sampling.temperature, config.sampling.top_p,
                                 config.sampling.logprobs_from_sampling)
        self.ptx_texts = self._ptx_texts() if p.ptx_coef > 0 else []
        wandb_run = tracking.start_wandb(config.tracking, out.path, "ppo", to_dict(config)) if world.is_main else None
        self.metrics = tracking.MetricsLog(out.path, wandb_run, write=world.is_main)
        self.constant_reward = guards.ConstantReward(config.guards.constant_reward_updates)

    # ---------------------------------------------------------------- the loop

    def run(self, prompts: list, eval_prompts: list, *, resume: bool) -> dict[str, Any]:
        from tqdm import tqdm

        c, p = self.config, self.config.ppo
        start = self._resume() if resume else 0
        if start == 0 and eval_prompts:
            self.metrics.update({f"eval_before/{k}": v for k, v in self.evaluate(eval_prompts).items()})
        for update in tqdm(range(start, p.updates), initial=start, total=p.updates, desc="PPO updates",
                           disable=not self.world.is_main):
            batch = self._batch(prompts, update)
            # the sampling noise of an update depends on (seed, update, process) alone: a resumed run
            # draws what an uninterrupted one would, and no two processes draw the same
            torch.manual_seed(p.seed + update * self.world.size + self.world.rank)
            snapshot = self._snapshot()
            try:
                stats, rollout = self.step(batch, update)
            except Unhealthy as e:
                self._restore(snapshot)
                self._checkpoint(update)
                raise TrainingHalted(f"PPO stopped at update {update + 1}: {e}; its changes were undone. "
                                     f"Checkpoint of update {update} saved in {self.out.checkpoints}") from None
            self.metrics.log(update + 1, stats)
            self._guard(stats, update + 1, self.constant_reward.update(rollout.raw_scores.tolist()))
            if c.sample_every and (update + 1) % c.sample_every == 0:
                self._write_samples(update + 1, batch, rollout)
            # the last update's evaluation is the final one, below, run once
            if c.eval_every and (update + 1) % c.eval_every == 0 and eval_prompts and update + 1 < p.updates:
                self.metrics.log(update + 1, {f"eval/{k}": v for k, v in self.evaluate(eval_prompts).items()})
            if (update + 1) % c.save_every == 0 or update + 1 == p.updates:
                self._checkpoint(update + 1)
        final = {f"eval/{k}": v for k, v in self.evaluate(eval_prompts).items()} if eval_prompts else {}
        if final:
            self.metrics.log(p.updates, final)
        self._save()
        self.metrics.update({**final, "train/updates": p.updates, **tracking.peak_memory_mb()})
        if self.metrics.wandb_run is not None:
            self.metrics.wandb_run.finish()
        return self.metrics.final

    def step(self, prompts: list, update: int = 0) -> tuple[dict[str, float], Rollout]:
        """One PPO update of the global batch `prompts`: rollout, advantages, optimisation; returns its
        logged figures and the (global) rollout."""
        c, p = self.config, self.config.ppo
        started, timings = time.perf_counter(), {}
        mine = self._shard(prompts)
        query_ids, query_mask = self._encode_prompts(mine)
        rollout = make_rollout(self.stack, query_ids, query_mask, [list(r.messages) for r in mine], self.sampling,
                               self.score, self.normaliser, self.eos_ids, self.tokenizer.pad_token_id,
                               c.reward.no_eos_penalty, timings)
        rollout = gather_rollout(rollout, self.world, self.tokenizer.pad_token_id)
        mask = rollout.response_mask.float()
        if not torch.isfinite(rollout.raw_scores).all():
            raise Unhealthy(f"the reward is not finite for {int((~torch.isfinite(rollout.raw_scores)).sum())} responses")
        with torch.no_grad():
            kl = adv.kl_per_token(rollout.logprobs, rollout.ref_logprobs, p.kl_estimator) * mask  # (B, T)
            rewards = adv.shaped_rewards(rollout.scores, kl, mask, self.kl_ctl.value)
            if p.whiten_rewards:
                rewards = adv.whiten(rewards, mask, shift_mean=False)
            advantages, returns = adv.gae(rewards, rollout.values, mask, p.gamma, p.lam)
            advantages = adv.whiten(advantages, mask)
        train_start = time.perf_counter()
        update_stats = self.optimise(rollout, advantages, returns, update)
        timings["time/training_s"] = time.perf_counter() - train_start
        self.scheduler.step()
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
            **update_stats,
            "lr": self.scheduler.get_last_lr()[0],
            "beta": beta,
            "eps": p.batch_size / elapsed,
            "time/update_s": elapsed,
            "tokens_per_s": n_tokens / elapsed,
            **timings,
        }, rollout

    def optimise(self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor, update: int) -> dict[str, float]:
        """ppo_epochs passes of shuffled mini-batches; the clipped losses of losses.py.

        The losses are token means over the whole mini-batch, whichever micro-batch or process holds
        the tokens, and gradients are summed across processes: the step is the one a single process
        takes on that mini-batch, so grad_accum and the number of processes change memory, not maths.
        """
        p, world = self.config.ppo, self.world
        mask = rollout.response_mask.float()
        per_process = p.mini_batch_size // world.size
        micro = per_process // p.grad_accum
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
                sums = sum(self._micro_step(rollout, advantages, returns, i, n_tokens, lengths)
                           for i in micro_batches(mine, lengths, micro))
                # not DDP: PolicyStack runs the policy and value adapters of one shared base in turn, and
                # peft flips requires_grad on every switch, which DDP's per-parameter hooks do not
                # follow; one all-reduce per optimiser step is what DDP with no_sync would send anyway
                grads = [q.grad if q.grad is not None else torch.zeros_like(q) for q in params]
                for q, g in zip(params, grads):
                    q.grad = g
                world.sum_([*grads, sums])
                stats = dict(zip(MINIBATCH_STATS, sums.tolist()))
                for name in ("policy_loss", "value_loss"):
                    if stats.pop(f"nonfinite/{name}"):
                        raise Unhealthy(f"the {name.replace('_', ' ')} is not finite")
                grad_norm = torch.nn.utils.clip_grad_norm_(params, p.max_grad_norm)
                if not torch.isfinite(grad_norm):
                    raise Unhealthy("the gradient norm is not finite")
                if not self.ptx_texts:
                    del stats["loss/ptx_avg"]
                _append(logs, {**stats, "policy/grad_norm": grad_norm})
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                heap.after_step(self.stack.device)
        out = {k: sum(v) / len(v) for k, v in logs.items()}
        out["val/ratio_max"] = max(logs["val/ratio"])
        out["val/ratio_min"] = min(logs["val/ratio"])
        return out

    def _micro_step(self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor, i: torch.Tensor,
                    n_tokens: torch.Tensor, lengths: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Backward of one micro-batch's share of its mini-batch's losses; returns its share of the
        MINIBATCH_STATS (token means times this micro-batch's share of the mini-batch's tokens).

        The micro-batch runs at its own width (unpadded_columns), not the rollout's: prompts and
        responses of real data differ in length far more than the demo's."""
        p, temperature = self.config.ppo, self.sampling.temperature
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
        if self.ptx_texts:
            # each process's ptx mean counts by its share of the mini-batch's sequences
            ptx = self._ptx_loss(len(i)) * (len(i) / p.mini_batch_size)
            (p.ptx_coef * ptx).backward()
        values = self.stack.values(ids, attn, T)
        vf = value_loss(values, rollout.values[i, resp], returns[i, resp], mask, p.cliprange_value)
        (p.vf_coef * vf.loss * share).backward()
        parts = [pg.loss * share, pg.approxkl * share, pg.clipfrac * share, pg.ratio * share, entropy * share,
                 vf.loss * share, vf.clipfrac * share, ptx, ~torch.isfinite(pg.loss), ~torch.isfinite(vf.loss)]
        return torch.stack([x.detach().float() for x in parts])

    def _ptx_texts(self) -> list[str]:
        """PPO-ptx (InstructGPT, eq. 2): whole SFT conversations for a language-modelling loss."""
        records = load_records(self.config.ppo.ptx_data, "instructions")
        return [self.tokenizer.apply_chat_template([*r.messages, {"role": "assistant", "content": r.response}],
                                                   tokenize=False) if self.tokenizer.chat_template
                else f"{r.messages[-1]['content']}\n{r.response}{self.tokenizer.eos_token}" for r in records]

    def _ptx_loss(self, n: int) -> torch.Tensor:
        """Mean token cross-entropy of the policy on this process's n of the next n x processes ptx
        texts (cycling through them)."""
        self._ptx_cursor = getattr(self, "_ptx_cursor", 0)
        first = self._ptx_cursor + self.world.rank * n
        texts = [self.ptx_texts[(first + k) % len(self.ptx_texts)] for k in range(n)]
        self._ptx_cursor += n * self.world.size
        self.tokenizer.padding_side = "right"
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                             max_length=self.config.data.max_prompt_length, add_special_tokens=False).to(self.stack.device)
        self.tokenizer.padding_side = "left"
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        self.stack.use("policy")
        return self.stack.peft(**enc, labels=labels).loss

    # ---------------------------------------------------------------- around the loop

    def _batch(self, prompts: list, update: int) -> list:
        """The prompts of an update: epochs of a seeded shuffle, so a resumed run sees the same ones."""
        per_epoch = len(prompts) // self.config.ppo.batch_size
        epoch, index = divmod(update, per_epoch)
        order = random.Random(self.config.ppo.seed + epoch).sample(prompts, len(prompts))
        size = self.config.ppo.batch_size
        return order[index * size:(index + 1) * size]

    def _shard(self, items: list) -> list:
        """This process's contiguous share of a global list, in the order gather joins them."""
        size = -(-len(items) // self.world.size)
        return items[self.world.rank * size:(self.world.rank + 1) * size]


    def _encode_prompts(self, prompts: list) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [self.tokenizer.apply_chat_template(list(r.messages), tokenize=False, add_generation_prompt=True)
                 if self.tokenizer.chat_template else r.messages[-1]["content"] for r in prompts]
        self.tokenizer.truncation_side = "left"
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                             max_length=self.config.data.max_prompt_length, add_special_tokens=False)
        return enc["input_ids"].to(self.stack.device), enc["attention_mask"].to(self.stack.device)

    @torch.no_grad()
    def evaluate(self, prompts: list) -> dict[str, float]:
        """Held-out prompts: greedy answers (reward, KL to the reference, length) and sampled ones (reward).

        Run every eval_every updates, so reward hacking and length drift show while training runs.
        Each process answers its share of the prompts; the figures are over all of them.
        """
        prompts = self._shard(prompts)
        messages = [list(x.messages) for x in prompts]
        greedy = self._answer(prompts, messages, do_sample=False)
        out = {"reward_mean": greedy["scores"].mean().item(), "kl": greedy["kl"].mean().item(),
               "response_length": greedy["length"].mean().item(), "no_eos_frac": 1 - greedy["has_eos"].float().mean().item()}
        n = self.config.data.eval_samples
        if n > 0:
            sampled = self._answer([p for p in prompts for _ in range(n)], [m for m in messages for _ in range(n)],
                                   do_sample=True)
            out["reward_mean_sampled"] = sampled["scores"].mean().item()
        return out

    def _answer(self, prompts: list, messages: list, do_sample: bool) -> dict[str, torch.Tensor]:
        """Per answer (of every process's prompts, in rank order): score, KL to the reference, length, has_eos."""
        from align.ppo.rollout import truncate_at_eos

        if not prompts:  # fewer prompts than processes: this one only joins the gather
            empty = torch.zeros(0, device=self.stack.device)
            return {k: self.world.gather(v) for k, v in
                    {"scores": empty, "kl": empty, "length": empty, "has_eos": empty.bool()}.items()}
        query_ids, query_mask = self._encode_prompts(prompts)
        temperature = self.sampling.temperature
        self.stack.peft.eval()
        sampling = {"do_sample": True, "temperature": temperature, "top_p": self.sampling.top_p, "top_k": 0} \
            if do_sample else {"do_sample": False}
        out = self.stack.generate(query_ids, query_mask, max_new_tokens=self.sampling.max_new_tokens,
                                  pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eos_ids, **sampling)
        responses, response_mask, has_eos = truncate_at_eos(out[:, query_ids.shape[1]:], self.eos_ids,
                                                            self.tokenizer.pad_token_id)
        r = Rollout(query_ids, query_mask, responses, response_mask, *(None,) * 6)
        T = responses.shape[1]
        logp = logprobs_of(self.stack.policy_logits(r.input_ids, r.attention_mask, T), responses, temperature)
        ref = logprobs_of(self.stack.policy_logits(r.input_ids, r.attention_mask, T, adapter="ref"), responses,
                          temperature)
        scores = self.normaliser(self.score(r, messages).float())
        self.stack.peft.train()
        mask = response_mask.float()
        local = {"scores": scores.to(mask.device), "kl": ((logp - ref) * mask).sum(1), "length": mask.sum(1),
                 "has_eos": has_eos}
        return {k: self.world.gather(v) for k, v in local.items()}

    def _guard(self, stats: dict[str, float], update: int, constant_reward: str | None = None) -> None:
        g = self.config.guards
        problem = None
        bad = [k for k, v in stats.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            problem = f"non-finite values in {', '.join(bad)}"
        elif stats["objective/kl"] > g.max_kl:
            problem = f"objective/kl {stats['objective/kl']:.2f} above guards.max_kl={g.max_kl}"
        elif not 1 / g.max_ratio <= stats["val/ratio_min"] <= stats["val/ratio_max"] <= g.max_ratio:
            problem = (f"policy ratio left [1/{g.max_ratio}, {g.max_ratio}] "
                       f"(min {stats['val/ratio_min']:.3f}, max {stats['val/ratio_max']:.3f}); lower ppo.learning_rate")
        elif constant_reward:
            problem = constant_reward
        if problem:
            # kept for inspection under a name --resume does not pick: resume starts from the last healthy one
            self._checkpoint(update, name=f"halted-update-{update}", require_finite=False)
            raise TrainingHalted(f"PPO stopped at update {update}: {problem}. Its state is in "
                                 f"{self.out.checkpoints / f'halted-update-{update}'}; --resume starts from the last "
                                 f"periodic checkpoint")

    def _write_samples(self, update: int, prompts: list, rollout: Rollout, n: int = 4) -> None:
        """The first n responses of this update's rollout, with the scores they were trained on."""
        if not self.world.is_main:
            return
        texts = decode_responses(rollout, self.tokenizer)[:n]
        rows = [{"update": update, "prompt": record.messages[-1]["content"], "response": text, "score": round(score, 4)}
                for record, text, score in zip(prompts, texts, rollout.scores.tolist())]
        with open(self.out.file("samples.jsonl"), "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    def _checkpoint(self, update: int, name: str | None = None, require_finite: bool = True) -> None:
        if not self.world.is_main:  # every process holds the same weights and optimiser state
            return
        state = {"step": update, "scheduler": self.scheduler.state_dict(), "kl_coef": self.kl_ctl.value,
                 "ptx_cursor": getattr(self, "_ptx_cursor", 0)}
        checkpoint.save_checkpoint(self.out.checkpoints, self.stack.named_trainable(), self.optimizer, state, name=name,
                                   require_finite=require_finite)

    def _snapshot(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Weights and optimiser state before an update, to undo it if it turns out unhealthy."""
        weights = {k: p.detach().clone() for k, p in self.stack.named_trainable().items()}
        return weights, _clone_tensors(self.optimizer.state_dict())

    def _restore(self, snapshot: tuple[dict[str, torch.Tensor], dict[str, Any]]) -> None:
        weights, optimizer_state = snapshot
        with torch.no_grad():
            for k, p in self.stack.named_trainable().items():
                p.copy_(weights[k])
        self.optimizer.load_state_dict(optimizer_state)

    def _resume(self) -> int:
        newest = self.out.newest_checkpoint()
        if newest is None:
            raise AlignError(f"{self.out.checkpoints}: no checkpoint to resume from")
        state = checkpoint.load_checkpoint(newest, self.stack.named_trainable(), self.optimizer)
        self._ptx_cursor = state.get("ptx_cursor", 0)
        self.scheduler.load_state_dict(state["scheduler"])
        checkpoint.apply_settings(self.optimizer, self.scheduler, self.config.ppo.learning_rate, 0.0)
        self.kl_ctl.value = state["kl_coef"]
        self.metrics.final = self.out.metrics()
        self.metrics.truncate_after(state["step"])
        if self.world.is_main:  # the updates after the checkpoint run again: keep their samples once
            rundir.truncate_jsonl(self.out.file("samples.jsonl"), "update", state["step"])
        return state["step"]

    def _save(self) -> None:
        """The aligned policy as a plain LoRA adapter (peft alone loads it), plus the value head."""
        from safetensors.torch import save_file

        if not self.world.is_main:
            return
        with rundir.replace_dir(self.out.file(rundir.ADAPTER)) as target:  # whole or not at all
            self.stack.peft.save_pretrained(target, selected_adapters=["policy"])
            nested = target / "policy"  # peft nests non-default adapters; flatten for plain loading
            if nested.is_dir():
                for item in nested.iterdir():
                    item.replace(target / item.name)
                nested.rmdir()
            self.tokenizer.padding_side = "right"
            self.tokenizer.save_pretrained(target)
            modeling.save_base_record(target, self.config.model)
        tmp = self.out.file(".value_head.safetensors.tmp")
        save_file({k: v.detach().cpu() for k, v in self.stack.value_head.state_dict().items()}, tmp)
        tmp.replace(self.out.file("value_head.safetensors"))


def _clone_tensors(state: Any) -> Any:
    """copy.deepcopy for a state dict at clone() speed: deepcopy took 6 ms an update on the tiny model,
    117 ms on SmolLM2's adapters (30 ms this way)."""
    if isinstance(state, torch.Tensor):
        return state.clone()
    if isinstance(state, dict):
        return {k: _clone_tensors(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_clone_tensors(v) for v in state]
    return state  # numbers, strings, None and tuples of them (betas) are not changed in place


def _append(logs: dict[str, list[float]], values: dict[str, Any]) -> None:
    for key, value in values.items():
        logs.setdefault(key, []).append(float(value.detach()) if isinstance(value, torch.Tensor) else float(value))


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
