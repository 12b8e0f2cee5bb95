"""Answers: every model answers the same prompts, greedily and sampled with the same seeds, in
batches. P prompts, S sampled answers per prompt, Q prompt tokens (left-padded), T answer tokens."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from align.core import decoding
from align.core.sampling_weights import sampling_weights
from align.eval.config import GenerationSettings
from align.eval.models import View


@dataclass
class Answer:
    text: str
    token_ids: list[int]  # the answer's tokens up to and including the first EOS
    has_eos: bool
    logprob: float = float("nan")  # Σ_t log π_T(a_t | x, a_<t) under the model that wrote it

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Answer:
        return cls(d["text"], list(d["token_ids"]), bool(d["has_eos"]), float(d.get("logprob", float("nan"))))


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


def encode_prompts(view: View, prompts: list, max_length: int) -> list[list[int]]:
    """Token ids of each prompt as `view`'s model is asked it: its demonstrations as earlier turns, then the prompt;
    over-long ones lose their start, so the question survives. (A soft prompt's virtual tokens are the model's,
    not the prompt's: what runs the model puts them first.)"""
    tokenizer = view.tokenizer
    tokenizer.truncation_side = "left"
    texts = [prompt_text(tokenizer, [*view.demonstrations, *p.messages]) for p in prompts]
    return tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=False)["input_ids"]


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
    """Per batch of prompts: the greedy answers, then one sampled pass per seed with `samples_per_seed`
    answers per prompt. Each answer carries log π_T of its tokens (T = the sampling temperature)."""
    tokenizer = view.tokenizer
    prompt_ids = [[*view.prefix, *ids] for ids in encode_prompts(view, prompts, settings.max_prompt_length)]
    greedy: list[Answer] = []
    sampled: list[list[Answer]] = [[] for _ in prompts]
    rows = settings.batch_size * max(1, samples_per_seed)  # a sampled pass's rows (the greedy one: batch_size)
    with view.active() as model, sampling_weights(model, rows, enabled=settings.working_copy):
        for start in range(0, len(prompts), settings.batch_size):
            batch = Batch(model, tokenizer, prompt_ids[start:start + settings.batch_size], view.eos_ids, settings)
            greedy += batch.generate(1, greedy=True)
            _tick(progress, len(batch.rows))
            for seed in settings.seeds if samples_per_seed else ():
                torch.manual_seed(seed_for(seed, start))
                out = batch.generate(samples_per_seed)
                for i in range(len(batch.rows)):  # each prompt's samples come out together
                    sampled[start + i] += out[i * samples_per_seed:(i + 1) * samples_per_seed]
                _tick(progress, len(batch.rows) * samples_per_seed)
    return Answers(greedy, sampled)


class Batch:
    """Prompts run through the model once (core.decoding.prompt: their shared prefix once for all): the greedy
    pass and each sampled pass decode from copies of that cache."""

    def __init__(self, model: Any, tokenizer: Any, rows: list[list[int]], eos_ids: list[int],
                 settings: GenerationSettings):
        self.model, self.tokenizer, self.rows, self.eos_ids, self.settings = model, tokenizer, rows, eos_ids, settings
        self.prompted = decoding.prompt(model, rows, tokenizer.pad_token_id)

    def generate(self, n: int, greedy: bool = False) -> list[Answer]:
        """n answers per prompt, prompt by prompt, each with log π_T of its tokens."""
        settings = self.settings
        out = decoding.sample(self.model, self.prompted, max_new_tokens=settings.max_new_tokens,
                              temperature=settings.temperature, top_p=settings.top_p, greedy=greedy, n=n,
                              eos_ids=self.eos_ids, pad_id=self.tokenizer.pad_token_id)
        answers = []
        for row, logp in zip(out.tokens.tolist(), out.logprobs.tolist()):
            kept, has_eos = cut_at_eos(row, self.eos_ids)
            text = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
            answers.append(Answer(text, kept, has_eos, float(sum(logp[:len(kept)]))))
        return answers


def _tick(progress: Any, n: int) -> None:
    if progress is not None:
        progress.update(n)
