"""PPO's held-out evaluation: greedy answers (reward, KL to the reference, length, EOS) and sampled
ones (reward), before the first update, every eval_every updates and after the last, so reward
hacking and length drift show while training runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from align.core.distributed import World
from align.ppo.batches import shard
from align.ppo.losses import logprobs_of
from align.ppo.models import REF, PolicyStack
from align.ppo.rollout import Normalise, Rollout, Sampling, Scorer, truncate_at_eos


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

    @torch.no_grad()
    def __call__(self, prompts: list) -> dict[str, float]:
        """Each process answers its share of the prompts; the figures are over all of them."""
        prompts = shard(prompts, self.world)
        messages = [list(x.messages) for x in prompts]
        greedy = self.answer(prompts, messages, do_sample=False)
        out = {"reward_mean": greedy["scores"].mean().item(), "kl": greedy["kl"].mean().item(),
               "response_length": greedy["length"].mean().item(), "no_eos_frac": 1 - greedy["has_eos"].float().mean().item()}
        n = self.samples_per_prompt
        if n > 0:
            sampled = self.answer([p for p in prompts for _ in range(n)], [m for m in messages for _ in range(n)],
                                  do_sample=True)
            out["reward_mean_sampled"] = sampled["scores"].mean().item()
        return out

    def answer(self, prompts: list, messages: list, do_sample: bool) -> dict[str, torch.Tensor]:
        """Per answer (of every process's prompts, in rank order): score, KL to the reference, length, has_eos."""
        if not prompts:  # fewer prompts than processes: this one only joins the gather
            empty = torch.zeros(0, device=self.stack.device)
            return {k: self.world.gather(v) for k, v in
                    {"scores": empty, "kl": empty, "length": empty, "has_eos": empty.bool()}.items()}
        query_ids, query_mask = self.encode(prompts)
        temperature = self.sampling.temperature
        self.stack.peft.eval()
        sampling = {"do_sample": True, "temperature": temperature, "top_p": self.sampling.top_p, "top_k": 0} \
            if do_sample else {"do_sample": False}
        out = self.stack.generate(query_ids, query_mask, max_new_tokens=self.sampling.max_new_tokens,
                                  pad_token_id=self.pad_id, eos_token_id=self.eos_ids, **sampling)
        responses, response_mask, has_eos = truncate_at_eos(out[:, query_ids.shape[1]:], self.eos_ids, self.pad_id)
        r = Rollout(query_ids, query_mask, responses, response_mask, *(None,) * 6)
        T = responses.shape[1]
        logp = logprobs_of(self.stack.policy_logits(r.input_ids, r.attention_mask, T), responses, temperature)
        ref = logprobs_of(self.stack.policy_logits(r.input_ids, r.attention_mask, T, adapter=REF), responses,
                          temperature)
        scores = self.normaliser(self.score(r, messages).float())
        self.stack.peft.train()
        mask = response_mask.float()
        local = {"scores": scores.to(mask.device), "kl": ((logp - ref) * mask).sum(1), "length": mask.sum(1),
                 "has_eos": has_eos}
        return {k: self.world.gather(v) for k, v in local.items()}
