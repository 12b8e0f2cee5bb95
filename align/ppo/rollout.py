"""No-grad experience: sample responses, cut them at EOS, score them, and take the log-probs and
values the update needs. B prompts, Q query tokens (left-padded), T response tokens."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from align.core.callables import RewardFunctionError, reward_value
from align.core.distributed import World
from align.ppo.batches import micro_batches, unpadded_columns
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
    member_scores: torch.Tensor | None = None  # (B, K) a reward ensemble's members' normalised r(x, y)

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


@dataclass
class Sampling:
    max_new_tokens: int
    temperature: float
    top_p: float
    logprobs_from_sampling: bool  # log π_old from the sampling logits, not a pass of its own
    working_copy: bool = True  # sample on merged (and on the CPU packed) weights: core.sampling_weights


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
    *,
    max_tokens: int | None = None,
    max_rows: int | None = None,
    length_penalty: float = 0.0,
) -> Rollout:
    """Generate, truncate at EOS, then the no-grad passes (no_grad_passes) for π_ref, V and r, and for
    π_old unless the sampling logits give it; those run in micro-batches of at most max_tokens padded
    tokens and max_rows rows (None: all rows in one).

    Log-probs are under the whole tempered distribution, also when top_p < 1 truncated the sampling
    (as TRL's PPO did; the N+ recipe samples with top_p = 1).
    """
    start = time.perf_counter()
    stack.peft.eval()
    out = stack.sample(query_ids, query_mask, max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                       top_p=sampling.top_p, eos_ids=eos_ids, pad_id=pad_id, working_copy=sampling.working_copy)
    responses, response_mask, has_eos = truncate_at_eos(out.tokens, eos_ids, pad_id)
    timings["time/generation_s"] = time.perf_counter() - start

    start = time.perf_counter()
    rollout = Rollout(query_ids, query_mask, responses, response_mask, *(None,) * 6)  # filled below
    if sampling.logprobs_from_sampling:
        rollout.logprobs = out.logprobs * response_mask
    scoring_s = no_grad_passes(stack, rollout, prompts, score, sampling.temperature, max_tokens, max_rows,
                               policy=not sampling.logprobs_from_sampling, values=True)
    timings["time/forward_s"] = time.perf_counter() - start - scoring_s
    timings["time/scoring_s"] = scoring_s

    scores = normalise(rollout.raw_scores) - length_penalty * response_mask.sum(1)
    if no_eos_penalty is not None:
        # N+ details: a response that never ends gets a fixed low score, not the reward model's
        scores = torch.where(has_eos, scores, torch.full_like(scores, no_eos_penalty))
    rollout.scores, rollout.has_eos = scores, has_eos
    stack.peft.train()
    return rollout


def rows_of(rollout: Rollout, rows: torch.Tensor, lengths: tuple[torch.Tensor, torch.Tensor]) -> Rollout:
    """The token ids and masks of `rows` at their own width (unpadded_columns): a micro-batch to read."""
    Q = rollout.query_ids.shape[1]
    seq, resp = unpadded_columns(*lengths, rows, Q)
    query = slice(seq.start, Q)
    return Rollout(rollout.query_ids[rows, query], rollout.query_mask[rows, query], rollout.response_ids[rows, resp],
                   rollout.response_mask[rows, resp], *(None,) * 6)


@torch.no_grad()
def no_grad_passes(stack: PolicyStack, rollout: Rollout, prompts: list, score: Scorer, temperature: float,
                   max_tokens: int | None, max_rows: int | None, *, policy: bool, values: bool) -> float:
    """Fill rollout.ref_logprobs (B, T), raw_scores (B,), and with `policy` logprobs, with `values` values:
    micro-batches of like-length rows of at most max_tokens padded tokens and max_rows rows (None: all
    rows in one), each at its own width, under no_grad, so no pass keeps anything for a backward; 0
    on padding. Per micro-batch the reference pass runs before the reward, which a reward head on the
    base reads off it (PolicyStack.rewards). Returns the seconds spent scoring."""
    B, T = rollout.response_ids.shape
    device = rollout.response_ids.device
    lengths = (rollout.query_mask.sum(1).cpu(), rollout.response_mask.sum(1).cpu())
    everything = torch.arange(B)
    cut = micro_batches(everything, lengths, max_rows, max_tokens) if max_tokens else [everything]
    filled = {"ref_logprobs": True, "logprobs": policy, "values": values}
    out = {name: torch.zeros(B, T, device=device) for name, wanted in filled.items() if wanted}
    raw_scores = torch.zeros(B, device=device)
    scoring_s = 0.0
    for rows in cut:
        part = rows_of(rollout, rows, lengths)
        ids, mask, t = part.input_ids, part.attention_mask, part.response_ids.shape[1]
        real = part.response_mask
        if policy:
            out["logprobs"][rows, :t] = logprobs_of(stack.policy_logits(ids, mask, t), part.response_ids, temperature) * real
        out["ref_logprobs"][rows, :t] = logprobs_of(stack.policy_logits(ids, mask, t, adapter=REF), part.response_ids,
                                                    temperature) * real
        start = time.perf_counter()
        raw_scores[rows] = score(part, [prompts[i] for i in rows.tolist()]).to(device).float()
        members = getattr(score, "members", None)  # (K, rows) an ensemble's own scores
        if members is not None:
            if rollout.member_scores is None:
                rollout.member_scores = torch.zeros(B, members.shape[0], device=device)
            rollout.member_scores[rows] = members.T.to(device).float()
        scoring_s += time.perf_counter() - start
        if values:
            out["values"][rows, :t] = stack.values(ids, mask, t) * real
    for name, tensor in out.items():
        setattr(rollout, name, tensor)
    rollout.raw_scores = raw_scores
    return scoring_s


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
                   world.gather(r.raw_scores), world.gather(r.scores), world.gather(r.has_eos),
                   None if r.member_scores is None else world.gather(r.member_scores))


def shared_base_scorer(stack: PolicyStack) -> Scorer:
    """Same base and tokenizer: the reward adapter reads the rollout's own token ids."""

    def score(rollout: Rollout, prompts: list) -> torch.Tensor:
        rewards = stack.rewards(rollout.input_ids, rollout.attention_mask, rollout.last_index)
        score.members = stack.last_members  # an ensemble's (K, rows), for the logs
        return rewards

    score.members = None
    return score


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


def text_scorer(reward_model: Any, tokenizer: Any, max_tokens: int | None = None) -> Scorer:
    """Another tokenizer or base: decode each response and let the reward model re-tokenise it, scoring
    (without gradients, in eval mode) batches of like length of at most max_tokens padded tokens."""
    from align.reward.score import conversation_text

    def score(rollout: Rollout, prompts: list) -> torch.Tensor:
        texts = [conversation_text(reward_model.tokenizer, p, c) for p, c in zip(prompts, decode_responses(rollout, tokenizer))]
        rewards = reward_model.score_texts(texts, max_tokens=max_tokens)
        score.members = getattr(reward_model, "last_members", None)  # an ensemble's (K, rows), for the logs
        return rewards

    score.members = None
    return score


def reward_scorer(reward: RewardSettings, stack: PolicyStack, tokenizer: Any,
                  max_tokens: int | None = None) -> tuple[Scorer, Normalise]:
    """The reward of rollouts and held-out answers, with the normalisation PPO trains on: a rule-based
    function (never normalised), the reward adapter and head on the policy's own base, or a reward
    model of its own that re-tokenises the text in batches of at most max_tokens padded tokens;
    reward.normalise=false keeps the model's raw score."""
    if reward.function is not None:
        from align.core.callables import load_callable

        return function_scorer(load_callable(reward.function), tokenizer, reward.function), _unchanged
    if stack.shares_reward:
        score, normaliser = shared_base_scorer(stack), stack.normaliser
    else:
        from align.reward import members

        # an ensemble's scores come normalised and combined by its objective (its normaliser is the identity)
        reward_model = members.load(reward.model, reward.ensemble_objective, reward.uwo_lambda)
        score, normaliser = text_scorer(reward_model, tokenizer, max_tokens), reward_model.normaliser
    return score, normaliser if reward.normalise else _unchanged


def _unchanged(raw: torch.Tensor) -> torch.Tensor:
    return raw
