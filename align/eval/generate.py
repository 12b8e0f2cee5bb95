"""Answers: every model answers the same prompts, greedily and sampled with the same seeds, in
batches. P prompts, S sampled answers per prompt, Q prompt tokens (left-padded), T answer tokens."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from align.eval.config import GenerationSettings
from align.eval.models import View


@dataclass
class Answer:
    text: str
    token_ids: list[int]  # the answer's tokens up to and including the first EOS
    has_eos: bool

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Answer:
        return cls(d["text"], list(d["token_ids"]), bool(d["has_eos"]))


@dataclass
class Answers:
    """One model's answers: greedy[p] and sampled[p][s] for prompt p."""

    greedy: list[Answer]  # (P,)
    sampled: list[list[Answer]]  # (P, S)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Answers:
        return cls([Answer.from_dict(a) for a in d["greedy"]],
                   [[Answer.from_dict(a) for a in row] for row in d["sampled"]])


def prompt_text(tokenizer: Any, messages: tuple | list) -> str:
    """The text a model continues: its chat template with the assistant turn opened, or the last turn."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return messages[-1]["content"]


def encode_prompts(tokenizer: Any, prompts: list, max_length: int) -> list[list[int]]:
    """Token ids of each prompt; over-long prompts lose their start, so the question survives."""
    tokenizer.truncation_side = "left"
    texts = [prompt_text(tokenizer, p.messages) for p in prompts]
    return tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=False)["input_ids"]


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, Q), mask (B, Q)), padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
    return ids, mask


def cut_at_eos(tokens: list[int], eos_ids: list[int]) -> tuple[list[int], bool]:
    """The tokens up to and including the first EOS, and whether there was one."""
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[:i + 1], True
    return tokens, False


def seed_for(seed: int, start: int) -> int:
    """One seed per (pass, batch): the same for every model, whatever ran before."""
    return seed * 1_000_003 + start


@torch.inference_mode()
def answer(view: View, prompts: list, settings: GenerationSettings, samples_per_seed: int,
           progress: Any = None) -> Answers:
    """Greedy answers, then one sampled pass per seed with `samples_per_seed` answers per prompt."""
    tokenizer = view.tokenizer
    prompt_ids = encode_prompts(tokenizer, prompts, settings.max_prompt_length)
    common = {"max_new_tokens": settings.max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
              "eos_token_id": view.eos_ids}
    greedy: list[Answer] = []
    sampled: list[list[Answer]] = [[] for _ in prompts]
    with view.active() as model:
        for start in range(0, len(prompts), settings.batch_size):
            batch = prompt_ids[start:start + settings.batch_size]
            greedy += _generate(model, tokenizer, batch, view.eos_ids, do_sample=False, **common)
            _tick(progress, len(batch))
        if samples_per_seed == 0:
            return Answers(greedy, sampled)
        for seed in settings.seeds:
            for start in range(0, len(prompts), settings.batch_size):
                batch = prompt_ids[start:start + settings.batch_size]
                torch.manual_seed(seed_for(seed, start))
                out = _generate(model, tokenizer, batch, view.eos_ids, do_sample=True, top_k=0,
                                temperature=settings.temperature, top_p=settings.top_p,
                                num_return_sequences=samples_per_seed, **common)
                for i in range(len(batch)):  # generate returns each prompt's samples together
                    sampled[start + i] += out[i * samples_per_seed:(i + 1) * samples_per_seed]
                _tick(progress, len(batch) * samples_per_seed)
    return Answers(greedy, sampled)


def _generate(model: Any, tokenizer: Any, batch: list[list[int]], eos_ids: list[int], **kwargs: Any) -> list[Answer]:
    ids, mask = left_pad(batch, tokenizer.pad_token_id)
    device = next(model.parameters()).device
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
    answers = []
    for row in out[:, ids.shape[1]:].tolist():
        tokens, has_eos = cut_at_eos(row, eos_ids)
        answers.append(Answer(tokenizer.decode(tokens, skip_special_tokens=True).strip(), tokens, has_eos))
    return answers


def _tick(progress: Any, n: int) -> None:
    if progress is not None:
        progress.update(n)
