"""No-grad experience: sample responses, cut them at EOS, score them, and take the log-probs and
values the update needs. B prompts, Q query tokens (left-padded), T response tokens."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from align.core.callables import RewardFunctionError, reward_value
from align.core.distributed import World
from align.ppo.config import RewardSettings
from align.ppo.losses import logprobs_of
from align.ppo.models import REF, PolicyStack


@dataclass
class Rollout:
    query_ids: torch.Tensor  # (B, Q) prompt tokens, left-padded
    query_mask: torch.Tensor  # (B, Q)
    response_ids: torch.Tensor  # (B, T) sampled tokens a_t; pad after the first EOS
    response_mask: torch.Tensor  # (B, T) 1 on real response tokens, EOS included
    logprobs: torch.Tensor  # (B, T) log π_old(a_t|s_t)
    ref_logprobs: torch.Tensor  # (B, T) log π_ref(a_t|s_t)
    values: torch.Tensor  # (B, T) V_old(s_t)
    raw_scores: torch.Tensor  # (B,) reward model's r(x, y)
    scores: torch.Tensor  # (B,) normalised r(x, y), or the no-EOS penalty
    has_eos: torch.Tensor  # (B,) bool: the response ended with EOS within the token budget

    @property
    def input_ids(self) -> torch.Tensor:  # (B, Q + T)
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:  # (B, Q + T)
        return torch.cat([self.query_mask, self.response_mask], dim=1)

    @property
    def last_index(self) -> torch.Tensor:  # (B,) position of the last real token in input_ids
        return self.query_ids.shape[1] + self.response_mask.sum(1).long() - 1


def truncate_at_eos(responses: torch.Tensor, eos_ids: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep each response up to and including its first EOS; pad the rest.

    Returns (responses (B, T), mask (B, T), has_eos (B,)). A response with no EOS keeps all T tokens.
    """
    is_eos = torch.isin(responses, torch.tensor(eos_ids, device=responses.device))  # (B, T)
    T = responses.shape[1]
    positions = torch.arange(T, device=responses.device)
    first_eos = torch.where(is_eos, positions, T).min(dim=1).values  # (B,) T where there is none
    mask = positions[None, :] <= first_eos[:, None]  # (B, T)
    return torch.where(mask, responses, pad_id), mask.long(), first_eos < T


def unpadded_columns(query_lengths: torch.Tensor, response_lengths: torch.Tensor, rows: torch.Tensor,
                     Q: int) -> tuple[slice, slice]:
    """The columns that rows need of input_ids (B, Q + T) and of the response tensors (B, T): from the
    first token of their longest prompt to the last of their longest response. The rest is padding
    that every one of those rows has, and dropping it leaves their figures as they were: each row
    masks its own left padding, and causal attention never reads to the right. The lengths are on
    the CPU, so cutting costs no device sync.

    At least one prompt column stays: the first response token is predicted from the last prompt
    column, a pad where every prompt is empty (a template-less prompt of "")."""
    q, t = max(int(query_lengths[rows].max()), 1), int(response_lengths[rows].max())
    return slice(max(Q - q, 0), Q + t), slice(0, t)


def micro_batches(rows: torch.Tensor, lengths: tuple[torch.Tensor, torch.Tensor], size: int) -> list[torch.Tensor]:
    """A mini-batch's rows cut into micro-batches of `size`, rows of like length together, so that
    each needs fewer columns (unpadded_columns). The mini-batch's gradient is the sum over its
    micro-batches however they are cut; lengths (prompt, response) are on the CPU."""
    query_lengths, response_lengths = lengths
    return list(rows[torch.argsort((query_lengths + response_lengths)[rows], stable=True)].split(size))


@dataclass
class Sampling:
    max_new_tokens: int
    temperature: float
    top_p: float
    logprobs_from_sampling: bool  # log π_old from the sampling logits, not a pass of its own


Scorer = Callable[[Rollout, list], torch.Tensor]  # (rollout, prompt messages) -> raw rewards (B,)
Normalise = Callable[[torch.Tensor], torch.Tensor]  # raw rewards -> the ones PPO trains on (B,)


@torch.no_grad()
def make_rollout(
    stack: PolicyStack,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    prompts: list,
    sampling: Sampling,
    score: Scorer,
    normalise: Normalise,
    eos_ids: list[int],
    pad_id: int,
    no_eos_penalty: float | None,
    timings: dict[str, float],
) -> Rollout:
    """Generate, truncate at EOS, then one no-grad pass each for π_ref, V and r, and for π_old unless
    the sampling logits give it.

    Log-probs are under the whole tempered distribution, also when top_p < 1 truncated the sampling
    (as TRL's PPO did; the N+ recipe samples with top_p = 1).
    """
    start = time.perf_counter()
    stack.peft.eval()
    out = stack.generate(
        query_ids, query_mask, do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0,
        max_new_tokens=sampling.max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_ids, use_cache=True,
        output_logits=sampling.logprobs_from_sampling, return_dict_in_generate=True,
    )
    responses, response_mask, has_eos = truncate_at_eos(out.sequences[:, query_ids.shape[1]:], eos_ids, pad_id)
    timings["time/generation_s"] = time.perf_counter() - start

    start = time.perf_counter()
    rollout = Rollout(query_ids, query_mask, responses, response_mask, *(None,) * 6)  # filled below
    T = responses.shape[1]
    ids, mask = rollout.input_ids, rollout.attention_mask
    # out.logits are the raw logits of each sampling step, before temperature or top-p: (B, V) x T
    logits = torch.stack(out.logits, 1) if sampling.logprobs_from_sampling else stack.policy_logits(ids, mask, T)
    rollout.logprobs = logprobs_of(logits, responses, sampling.temperature) * response_mask
    del logits, out
    rollout.ref_logprobs = logprobs_of(stack.policy_logits(ids, mask, T, adapter=REF), responses,
                                       sampling.temperature) * response_mask
    rollout.values = stack.values(ids, mask, T) * response_mask
    timings["time/forward_s"] = time.perf_counter() - start

    start = time.perf_counter()
    rollout.raw_scores = score(rollout, prompts).to(responses.device).float()
    scores = normalise(rollout.raw_scores)
    if no_eos_penalty is not None:
        # N+ details: a response that never ends gets a fixed low score, not the reward model's
        scores = torch.where(has_eos, scores, torch.full_like(scores, no_eos_penalty))
    rollout.scores, rollout.has_eos = scores, has_eos
    timings["time/scoring_s"] = time.perf_counter() - start
    stack.peft.train()
    return rollout


def gather_rollout(rollout: Rollout, world: World, pad_id: int) -> Rollout:
    """Every process's rollout joined in rank order: the global batch, on every process.

    Queries stay left-padded and responses right-padded, to the longest across processes, so
    positions (counted from the masks), the last real token and every masked figure are unchanged.
    Small next to the model, and it lets the advantages, whitening and logged figures be computed
    on the global batch by the single-process code."""
    if world.size == 1:
        return rollout
    Q, T = world.max([rollout.query_ids.shape[1], rollout.response_ids.shape[1]])

    def left(x: torch.Tensor, value: float) -> torch.Tensor:
        return torch.nn.functional.pad(x, (Q - x.shape[1], 0), value=value)

    def right(x: torch.Tensor, value: float) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value)

    r = rollout
    return Rollout(world.gather(left(r.query_ids, pad_id)), world.gather(left(r.query_mask, 0)),
                   world.gather(right(r.response_ids, pad_id)), world.gather(right(r.response_mask, 0)),
                   *(world.gather(right(x, 0.0)) for x in (r.logprobs, r.ref_logprobs, r.values)),
                   world.gather(r.raw_scores), world.gather(r.scores), world.gather(r.has_eos))


def shared_base_scorer(stack: PolicyStack) -> Scorer:
    """Same base and tokenizer: the reward adapter reads the rollout's own token ids."""
    return lambda rollout, prompts: stack.rewards(rollout.input_ids, rollout.attention_mask, rollout.last_index)


def function_scorer(fn: Callable[[str, str], float], tokenizer: Any, spec: str) -> Scorer:
    """A rule-based reward: fn(prompt text, response text) per sample; `spec` (module:function) names
    it when it fails."""

    def score(rollout: Rollout, prompts: list) -> torch.Tensor:
        texts = decode_responses(rollout, tokenizer)
        try:
            return torch.tensor([reward_value(fn, spec, p[-1]["content"], t) for p, t in zip(prompts, texts)])
        except RewardFunctionError as e:
            raise RewardFunctionError(f"{e}. Once the function is fixed, --resume continues the run from its newest "
                                      f"checkpoint (with none saved yet, the same command starts it again)") from None

    return score


def decode_responses(rollout: Rollout, tokenizer: Any) -> list[str]:
    ids = torch.where(rollout.response_mask.bool(), rollout.response_ids, tokenizer.pad_token_id)
    return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def text_scorer(reward_model: Any, tokenizer: Any) -> Scorer:
    """Another tokenizer or base: decode each response and let the reward model re-tokenise it."""

    def score(rollout: Rollout, prompts: list) -> torch.Tensor:
        return reward_model.score(prompts, decode_responses(rollout, tokenizer))

    return score


def reward_scorer(reward: RewardSettings, stack: PolicyStack, tokenizer: Any) -> tuple[Scorer, Normalise]:
    """The reward of rollouts and held-out answers, with the normalisation PPO trains on: a rule-based
    function (never normalised), the reward adapter and head on the policy's own base, or a reward
    model of its own that re-tokenises the text; reward.normalise=false keeps the model's raw score."""
    if reward.function is not None:
        from align.core.callables import load_callable

        return function_scorer(load_callable(reward.function), tokenizer, reward.function), _unchanged
    if stack.shares_reward:
        score, normaliser = shared_base_scorer(stack), stack.normaliser
    else:
        from reward.score import RewardModel

        reward_model = RewardModel.load(reward.model)
        score, normaliser = text_scorer(reward_model, tokenizer), reward_model.normaliser
    return score, normaliser if reward.normalise else _unchanged


def _unchanged(raw: torch.Tensor) -> torch.Tensor:
    return raw
