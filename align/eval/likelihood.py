"""Log-likelihoods under a model: of its answers (KL to the base), of general text (perplexity).
B sequences, Q context tokens, T scored tokens, V vocab."""

from __future__ import annotations

import math
from typing import Any

import torch

from align.eval.models import View
from align.core.prefix import cache_name, left_pad, position_ids, prefill, right_pad


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T) at each target: (B, T, V), (B, T) -> (B, T)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@torch.inference_mode()
def continuation_logprobs(view: View, contexts: list[list[int]], continuations: list[list[int]],
                          temperature: float = 1.0, batch_size: int = 16) -> list[float]:
    """Σ_t log p_T(c_t | context, c_<t) of each continuation: the log-likelihood of an answer after its
    prompt at the sampling temperature T (KL estimates), or of a choice after its question (T = 1)."""
    return _continuation_logprobs(view, [[*view.prefix, *c] for c in contexts], continuations, temperature, batch_size)


def _continuation_logprobs(view: View, contexts: list[list[int]], continuations: list[list[int]],
                           temperature: float, batch_size: int) -> list[float]:
    """continuation_logprobs of contexts that already hold the view's prefix."""
    pad = view.tokenizer.pad_token_id
    # batches of similar lengths waste less compute on padding; results go back in the caller's order
    order = sorted(range(len(contexts)), key=lambda i: (len(contexts[i]), len(continuations[i])))
    out = [0.0] * len(contexts)
    with view.active() as model:
        device = next(model.parameters()).device
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            q_ids, q_mask = left_pad([contexts[i] for i in chunk], pad)  # (B, Q)
            a_ids, a_mask = right_pad([continuations[i] for i in chunk], pad)  # (B, T)
            ids, mask = torch.cat([q_ids, a_ids], 1).to(device), torch.cat([q_mask, a_mask], 1).to(device)
            T = a_ids.shape[1]
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                           logits_to_keep=T + 1).logits[:, :-1]  # (B, T, V): position t predicts token t+1
            logp = token_logprobs(logits, a_ids.to(device), temperature)  # (B, T)
            for i, value in zip(chunk, (logp * a_mask.to(device)).sum(1).tolist()):
                out[i] = value
    return out


@torch.inference_mode()
def answers_logprobs(view: View, prompts: list[list[int]], answers: list[list[list[int]]], temperature: float = 1.0,
                     batch_size: int = 16) -> list[list[float]]:
    """Σ_t log p_T(a_t | x, a_<t) of each of the n answers of each prompt x (n the same for all).

    The same sums as `continuation_logprobs`, but each prompt runs through the model once (prefix.py)
    and its cache serves its n answers: most of the work when several samples share a prompt."""
    n = len(answers[0]) if answers else 0
    if n == 0 or any(len(a) != n for a in answers):
        raise ValueError("answers_logprobs needs the same number of answers for every prompt")
    pad = view.tokenizer.pad_token_id
    prompts = [[*view.prefix, *p] for p in prompts]
    per_chunk = max(1, batch_size // n)  # prompts per forward: about batch_size sequences each time
    out: list[list[float]] = []
    with view.active() as model:
        device = next(model.parameters()).device
        for start in range(0, len(prompts), per_chunk):
            rows, groups = prompts[start:start + per_chunk], answers[start:start + per_chunk]
            ids, mask, cache = prefill(model, rows, pad).expanded(n)  # (B·n, Q), cache of ids[:, :-1]
            if cache is None:
                flat = _continuation_logprobs(view, [r for r in rows for _ in range(n)], [a for g in groups for a in g],
                                              temperature, batch_size)
                out += [flat[i * n:(i + 1) * n] for i in range(len(rows))]
                continue
            a_ids, a_mask = (t.to(device) for t in right_pad([a for g in groups for a in g], pad))  # (B·n, T)
            full = torch.cat([mask, a_mask], 1)  # (B·n, Q + T)
            T = a_ids.shape[1]
            # the last prompt token predicts a_1; a_t predicts a_t+1
            logits = model(input_ids=torch.cat([ids[:, -1:], a_ids], 1), attention_mask=full,
                           position_ids=position_ids(full)[:, -(T + 1):], **{cache_name(model): cache}).logits[:, :-1]
            sums = (token_logprobs(logits, a_ids, temperature) * a_mask).sum(1).tolist()  # (B·n,)
            out += [sums[i * n:(i + 1) * n] for i in range(len(rows))]
    return out


def nll_sum(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """(Σ −log p(x_t | x_<t), number of predicted tokens) of right-padded windows: (B, L, V), (B, L), (B, L).
    The first token of each window is context only."""
    logp = token_logprobs(logits[:, :-1], ids[:, 1:])  # (B, L-1)
    predicted = mask[:, 1:].float()
    return float(-(logp * predicted).sum()), int(predicted.sum())


def windows(tokenizer: Any, documents: list[str], max_length: int) -> list[list[int]]:
    """Each document's tokens cut into non-overlapping windows of at most max_length."""
    rows = []
    for doc in documents:
        ids = tokenizer(doc, add_special_tokens=True)["input_ids"]
        rows += [ids[i:i + max_length] for i in range(0, len(ids), max_length) if len(ids[i:i + max_length]) > 1]
    return rows


@torch.inference_mode()
def perplexity(view: View, documents: list[str], max_length: int, batch_size: int = 8) -> float:
    """exp(mean negative log-likelihood per predicted token) over all windows of all documents."""
    rows = windows(view.tokenizer, documents, max_length)
    total, count, P = 0.0, 0, len(view.prefix)
    with view.active() as model:
        device = next(model.parameters()).device
        for start in range(0, len(rows), batch_size):
            ids, mask = (t.to(device) for t in right_pad([[*view.prefix, *r] for r in rows[start:start + batch_size]],
                                                         view.tokenizer.pad_token_id))
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits  # (B, P + L, V)
            nll, n = nll_sum(logits[:, P:], ids[:, P:], mask[:, P:])  # the document's tokens, after the soft prompt
            total, count = total + nll, count + n
    return math.exp(total / count) if count else math.nan
