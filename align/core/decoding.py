"""Sampling from a causal LM with a decode loop of our own (issue #24), for PPO's rollouts and evaluation's answers.

transformers' `generate` spends a CPU rollout's time outside the model: `torch.multinomial` draws a token by
exponentials over the whole vocabulary (9 ms a step for 8 x 49152 logits on the project's machine), its KV
cache concatenates every layer's keys and values again at every step, it rebuilds the attention mask each
step, and every prompt runs its chat template's system turn again. Here:

    prompt    the prompts, once: their shared prefix (the template's system turn, or a whole prompt sampled n
              times) run for one row, then every row's own tokens in one packed row, block-diagonal, so no row
              is padded to the longest (SmolLM2's demo prompts: 154 positions against 424 left-padded); the KV
              cache laid out as [shared prefix][left padding][own tokens] with room for the answer
    sample    then one token a row a step: drawn from softmax(logits / T), top-p truncated, by inverse CDF
              (one uniform a row); its log-prob under the whole tempered distribution kept (PPO's log π_old)
    draw      the inverse-CDF draw
    sample_queries   prompt and sample from left-padded query tensors (PPO's)

Rows see exactly their own sequence: the mask hides the padding and positions count real tokens only, so log-probs
equal a separate forward pass up to float rounding (tests/ppo/test_rollout.py). Models this cannot pack
(sliding-window or non-SDPA attention) take the padded prefill of core/prefix.py; the decode loop is the
same. B rows, P shared tokens, L cached columns, V vocabulary, T answer tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from align.core.prefix import (cache_name, cache_of, common_prefix, is_prompt_learning, left_pad, position_ids,
                               prefill)


class GrowingLayer(DynamicLayer):
    """A KV cache layer with room for the answer: each step writes its keys and values after the last ones instead
    of concatenating the whole cache again (transformers' DynamicLayer)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int):
        super().__init__()
        B, H, L, D = keys.shape
        self._keys = keys.new_empty(B, H, L + room, D)
        self._values = values.new_empty(B, values.shape[1], L + room, values.shape[-1])
        self._keys[:, :, :L], self._values[:, :, :L] = keys, values
        self.length, self.device, self.is_initialized = L, keys.device, True
        self.keys, self.values = self._keys[:, :, :L], self._values[:, :, :L]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[-2]:  # beyond the room asked for: grow as DynamicLayer does
            self._keys = torch.cat([self._keys[:, :, :self.length], key_states], -2)
            self._values = torch.cat([self._values[:, :, :self.length], value_states], -2)
        else:
            self._keys[:, :, self.length:end] = key_states
            self._values[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    def _unsupported(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("a GrowingLayer only grows: the decode loop never crops, reorders or reselects rows")

    crop = batch_repeat_interleave = batch_select_indices = reorder_cache = _unsupported


@dataclass
class Prompted:
    """Prompts run through the model: the cache of every prompt token, and the logits of the first answer token."""

    cache: Any  # DynamicCache over (B, L) columns
    mask: torch.Tensor  # (B, L) 1 on the real tokens
    logits: torch.Tensor  # (B, V) the next token's, fp32
    packs_steps: bool  # decode steps may take a ready boolean 4D mask (full_attention)

    def expanded(self, n: int, room: int) -> Prompted:
        """A fresh copy, each row repeated n times in place, its cache with room for `room` more tokens."""
        def rows(x: torch.Tensor) -> torch.Tensor:
            return x if n == 1 else x.repeat_interleave(n, 0)

        cache = DynamicCache()  # GrowingLayer copies the keys and values into its own buffers
        cache.layers = [GrowingLayer(rows(layer.keys), rows(layer.values), room) for layer in self.cache.layers]
        return Prompted(cache, rows(self.mask), rows(self.logits), self.packs_steps)


def full_attention(model: Any) -> bool:
    """Whether a hand-made boolean 4D mask says everything about who attends to whom: SDPA attention (eager adds its
    mask as floats), every layer full, and no window, chunking or ALiBi bias that transformers would build from the
    mask it is given (Mistral's `sliding_window`, Llama 4's `attention_chunk_size`, Falcon's `alibi`)."""
    config = model.config
    return (getattr(config, "_attn_implementation", None) == "sdpa" and attention_kinds(model) == {"full_attention"}
            and getattr(config, "sliding_window", None) is None and getattr(config, "attention_chunk_size", None) is None
            and not getattr(config, "alibi", False))


def attention_kinds(model: Any) -> set[str]:
    return set(getattr(model.config, "layer_types", None) or ["full_attention"])


PACKED_TOKENS = 1024
"""Own prompt tokens one packed pass takes at most: its mask, and the attention SDPA computes under it, grow with the
square of them (8 x 128 tokens: a 1024 x (P + 1024) mask); longer batches run in several packed passes."""


def prompt(model: Any, rows: list[list[int]], pad_id: int) -> Prompted:
    """Run the prompts (token ids, unpadded) through `model`: the shared prefix once, then the rows' own tokens.
    Under the caller's grad mode (sampling wants torch.inference_mode)."""
    if not rows or min(len(r) for r in rows) == 0:
        raise ValueError("every prompt needs at least one token")
    if is_prompt_learning(model):  # peft prepends its virtual tokens inside forward, past any cache of ours
        raise ValueError("a soft-prompt peft model cannot be sampled from a KV cache: add its virtual tokens to the "
                         "vocabulary (core.soft_prompt) first")
    other = attention_kinds(model) - {"full_attention", "sliding_attention"}
    if other:
        raise ValueError(f"{model.config.model_type} has {', '.join(sorted(other))} layers: align samples from "
                         "attention-only models")
    if not full_attention(model):
        return _padded(model, rows, pad_id)
    device = next(model.parameters()).device
    name = cache_name(model)
    shared = common_prefix(rows, keep=1) if len(rows) > 1 else 0
    prefix = []  # each layer's (keys, values) of the shared prefix
    if shared:
        out = model(input_ids=torch.tensor([rows[0][:shared]], device=device), use_cache=True, logits_to_keep=1,
                    **{name: DynamicCache()})
        prefix = [(layer.keys, layer.values) for layer in cache_of(out, name).layers]
    own = [r[shared:] for r in rows]
    width = shared + max(len(r) for r in own)
    parts = [_packed_pass(model, name, prefix, own[group], shared, width) for group in _groups(own, PACKED_TOKENS)]
    _, own_mask = left_pad(own, pad_id)
    mask = torch.cat([torch.ones(len(rows), shared, dtype=torch.long), own_mask], 1).to(device)  # [P][padding][own]
    cache = DynamicCache()
    cache.layers = [_RowLayer(torch.cat([p[1][j][0] for p in parts]), torch.cat([p[1][j][1] for p in parts]))
                    for j in range(len(parts[0][1]))]
    return Prompted(cache, mask, torch.cat([p[0] for p in parts]), packs_steps=True)


def _groups(own: list[list[int]], budget: int) -> list[slice]:
    """Consecutive rows whose own tokens together stay within the budget (a longer row alone)."""
    groups, start, tokens = [], 0, 0
    for i, r in enumerate(own):
        if i > start and tokens + len(r) > budget:
            groups.append(slice(start, i))
            start, tokens = i, 0
        tokens += len(r)
    return [*groups, slice(start, len(own))]


def _packed_pass(model: Any, name: str, prefix: list[tuple[torch.Tensor, torch.Tensor]], own: list[list[int]],
                 shared: int, width: int) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Rows' own tokens in one packed row after the shared prefix: (logits (B, V) at each row's last token, each
    layer's keys and values laid out as rows (B, H, width, D), own tokens on the right)."""
    device = next(model.parameters()).device
    lengths = torch.tensor([len(r) for r in own])
    ends = lengths.cumsum(0)  # each row's own tokens end here in the packed row
    starts = ends - lengths
    N = int(ends[-1])
    row_of = torch.repeat_interleave(torch.arange(len(own)), lengths)  # (N,)
    index = torch.arange(N)
    mask4d = None  # one row is plain causal attention after its prefix: transformers' own mask
    if len(own) > 1:  # own token i sees the prefix and the earlier own tokens of its row: block-diagonal causal
        sees = (row_of[:, None] == row_of[None, :]) & (index[None, :] <= index[:, None])  # (N, N)
        mask4d = torch.cat([torch.ones(N, shared, dtype=torch.bool), sees], 1)[None, None].to(device)  # (1, 1, N, P + N)
    cache = DynamicCache()
    cache.layers = [_RowLayer(k, v) for k, v in prefix]  # update concatenates: the prefix's own tensors stay as they are
    out = model(input_ids=torch.tensor([[t for r in own for t in r]], device=device), attention_mask=mask4d,
                position_ids=(shared + index - starts[row_of])[None].to(device), use_cache=True,
                logits_to_keep=(ends - 1).to(device), **{name: cache})
    # where each row's cached columns come from in the packed row: the prefix, then its own tokens (padding: 0)
    column = torch.zeros(len(own), width, dtype=torch.long)
    column[:, :shared] = torch.arange(shared)
    for i, (start, n) in enumerate(zip(starts.tolist(), lengths.tolist())):
        column[i, width - n:] = shared + start + torch.arange(n)
    column = column.flatten().to(device)
    layers = [(_gather(layer.keys, column, len(own)), _gather(layer.values, column, len(own)))
              for layer in cache_of(out, name).layers]
    return out.logits[0].float(), layers


def _gather(packed: torch.Tensor, column: torch.Tensor, rows: int) -> torch.Tensor:
    """(1, H, P + N, D) packed keys or values -> (B, H, L, D), each row's columns."""
    H, D = packed.shape[1], packed.shape[-1]
    return packed[0].index_select(1, column).view(H, rows, -1, D).transpose(0, 1).contiguous()


class _RowLayer(DynamicLayer):
    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.device, self.is_initialized = keys, values, keys.device, True


def _padded(model: Any, rows: list[list[int]], pad_id: int) -> Prompted:
    """Every prompt token but each row's last through prefix.prefill (shared prefix once, rows left-padded), then
    the last ones for the first answer token's logits."""
    start = prefill(model, rows, pad_id)
    name = cache_name(model)
    cache = start.cache if start.cache is not None else DynamicCache()
    out = model(input_ids=start.ids[:, -1:], attention_mask=start.mask, position_ids=position_ids(start.mask)[:, -1:],
                use_cache=True, logits_to_keep=1, **{name: cache})
    return Prompted(cache_of(out, name), start.mask, out.logits[:, -1].float(), packs_steps=False)


def draw(logprobs: torch.Tensor, top_p: float = 1.0) -> torch.Tensor:
    """One token a row (B,) from log-probs (B, V) by inverse CDF: the first token whose cumulative probability passes
    a uniform draw (one a row). top_p < 1 keeps the most probable tokens whose probability before them is under top_p (at least
    the first), renormalised (nucleus sampling, Holtzman et al. 2020, as transformers' TopPLogitsWarper)."""
    probs = logprobs.double().exp()  # float64: a float32 sum over 49152 tokens moves rare ones' odds by ~1e-7
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(-1, descending=True)
        probs = probs * ((probs.cumsum(-1) - probs) < top_p)
    cdf = probs.cumsum(-1)  # (B, V)
    u = torch.rand(cdf.shape[0], 1, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    token = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)  # (B, 1)
    return (token if order is None else order.gather(1, token)).squeeze(1)


def sample_queries(model: Any, query_ids: torch.Tensor, query_mask: torch.Tensor, **settings: Any) -> Sampled:
    """`sample` from left-padded queries (B, Q) and their mask, one answer each."""
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(query_ids, query_mask)]
    return sample(model, prompt(model, rows, settings["pad_id"]), **settings)


@dataclass
class Sampled:
    tokens: torch.Tensor  # (B, T) the answer tokens, pad after each row's first EOS
    logprobs: torch.Tensor  # (B, T) log softmax(logits / temperature) of each token, 0 after the first EOS


def sample(model: Any, start: Prompted, *, max_new_tokens: int, temperature: float, eos_ids: list[int], pad_id: int,
           top_p: float = 1.0, greedy: bool = False, n: int = 1) -> Sampled:
    """n answers a prompt (each prompt's together), up to max_new_tokens each; stops once every row has an EOS.
    greedy takes the most probable token; log-probs are at `temperature` either way."""
    state = start.expanded(n, max_new_tokens)
    name = cache_name(model)
    B = state.mask.shape[0]
    device = state.mask.device
    eos = torch.tensor(eos_ids, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    position = position_ids(state.mask)[:, -1:]  # (B, 1) the last prompt token's
    attend = torch.cat([state.mask.bool(), torch.zeros(B, max_new_tokens, dtype=torch.bool, device=device)], 1)
    logits, tokens, logprobs = state.logits, [], []
    for t in range(max_new_tokens):
        logp = torch.log_softmax(logits / temperature, -1)  # (B, V)
        token = logits.argmax(-1) if greedy else draw(logp, top_p)  # (B,)
        logprob = logp.gather(1, token[:, None]).squeeze(1)
        tokens.append(torch.where(done, pad_id, token))
        logprobs.append(torch.where(done, 0.0, logprob))
        done = done | torch.isin(token, eos)
        if t + 1 == max_new_tokens or bool(done.all()):
            break
        # finished rows go on with pad tokens that nothing reads, as generate's do
        L = state.mask.shape[1] + t + 1
        attend[:, L - 1] = True
        mask = attend[:, None, None, :L] if state.packs_steps else attend[:, :L].long()
        position = position + 1
        out = model(input_ids=tokens[-1][:, None], attention_mask=mask, position_ids=position, use_cache=True,
                    logits_to_keep=1, **{name: state.cache})
        logits = out.logits[:, -1].float()
    return Sampled(torch.stack(tokens, 1), torch.stack(logprobs, 1))

