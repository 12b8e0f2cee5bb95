"""PPO's held-out evaluation: greedy answers (reward, KL to the reference, length, EOS) and sampled
ones (reward), before the first update, every training.eval_steps updates and after the last, so reward
hacking and length drift show while training runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from align.core.distributed import World
from align.ppo.batches import shard
from align.ppo.models import PolicyStack
from align.ppo.rollout import Normalise, Rollout, Sampling, Scorer, no_grad_passes, truncate_at_eos


@dataclass
class HeldOut:
    """What answering and scoring held-out prompts takes; call it with the prompts."""

    stack: PolicyStack
    encode: Callable[[list], tuple[torch.Tensor, torch.Tensor]]  # prompt records -> ids, mask (B, Q), left-padded
    sampling: Sampling  # the rollouts' token budget, top-p, and temperature (in every log-prob too)
    eos_ids: list[int]
    pad_id: int
    score: Scorer
    normaliser: Normalise
    world: World
    samples_per_prompt: int  # sampled answers per prompt; 0: greedy only
    max_generated: int | None = None  # answers generated at once (the rollout's per process); None: all
    max_tokens: int | None = None  # padded tokens per micro-batch of the no-grad passes; None: all rows in one
    max_rows: int | None = None  # rows per micro-batch of the no-grad passes
    judge: Scorer | None = None  # a gold judge of the greedy answers (rollout.function_scorer); None: none

    @torch.no_grad()
    def __call__(self, prompts: list) -> dict[str, float]:
        """Each process answers its share of the prompts; the figures are over all of them."""
        prompts = shard(prompts, self.world)
        messages = [list(x.messages) for x in prompts]
        greedy = self.answer(prompts, messages, do_sample=False)
        out = {"reward_mean": greedy["scores"].mean().item(), "kl": greedy["kl"].mean().item(),
               "response_length": greedy["length"].mean().item(), "no_eos_frac": 1 - greedy["has_eos"].float().mean().item()}
        if self.judge is not None:
            out["judge_mean"] = greedy["judge"].mean().item()
        n = self.samples_per_prompt
        if n > 0:
            sampled = self.answer([p for p in prompts for _ in range(n)], [m for m in messages for _ in range(n)],
                                  do_sample=True)
            out["reward_mean_sampled"] = sampled["scores"].mean().item()
        return out

    def answer(self, prompts: list, messages: list, do_sample: bool) -> dict[str, torch.Tensor]:
        """Per answer (of every process's prompts, in rank order): score, KL to the reference, length, has_eos.
        Generated max_generated prompts of like length at a time, as a rollout's batch is: with 4 samples
        of 16 held-out prompts, 64 answers at once would hold four rollouts' KV cache."""
        local: dict[str, list[torch.Tensor]] = {"scores": [], "kl": [], "length": [], "has_eos": [],
                                                **({"judge": []} if self.judge is not None and not do_sample else {})}
        if prompts:
            query_ids, query_mask = self.encode(prompts)
            Q = query_ids.shape[1]
            order = torch.argsort(-query_mask.sum(1).cpu(), stable=True)
            for group in order.split(self.max_generated or len(prompts)):
                ids, mask = query_ids[group], query_mask[group]
                width = max(int(mask.sum(1).max()), 1)  # the group's own prompt columns (left-padded)
                figures = self._answer_group(ids[:, Q - width:], mask[:, Q - width:],
                                             [messages[i] for i in group.tolist()], do_sample)
                for name, value in figures.items():
                    local[name].append(value)
        # fewer prompts than processes leave this one none: it only joins the gather
        empty = torch.zeros(0, device=self.stack.device)
        return {k: self.world.gather(torch.cat(v) if v else (empty.bool() if k == "has_eos" else empty))
                for k, v in local.items()}

    def _answer_group(self, query_ids: torch.Tensor, query_mask: torch.Tensor, messages: list,
                      do_sample: bool) -> dict[str, torch.Tensor]:
        temperature = self.sampling.temperature
        self.stack.peft.eval()
        out = self.stack.sample(query_ids, query_mask, max_new_tokens=self.sampling.max_new_tokens,
                                temperature=temperature, top_p=self.sampling.top_p, greedy=not do_sample,
                                eos_ids=self.eos_ids, pad_id=self.pad_id, working_copy=self.sampling.working_copy)
        responses, response_mask, has_eos = truncate_at_eos(out.tokens, self.eos_ids, self.pad_id)
        r = Rollout(query_ids, query_mask, responses, response_mask, *(None,) * 6)
        # log π from a pass of its own, as π_ref's: the held-out KL is then exactly 0 while the policy is the reference
        no_grad_passes(self.stack, r, messages, self.score, temperature, self.max_tokens, self.max_rows,
                       policy=True, values=False)
        scores = self.normaliser(r.raw_scores.float())
        self.stack.peft.train()
        mask = response_mask.float()
        out = {"scores": scores.to(mask.device), "kl": ((r.logprobs - r.ref_logprobs) * mask).sum(1),
               "length": mask.sum(1), "has_eos": has_eos}
        if self.judge is not None and not do_sample:
            out["judge"] = self.judge(r, messages).float().to(mask.device)
        return out
