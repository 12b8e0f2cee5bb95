"""Instruction records -> TRL prompt/completion examples, through a prompt template; mixing.

Every template yields TRL's prompt-completion shape, so SFTTrainer puts the loss on the
completion only. `chat` keeps conversations as message lists (TRL applies the tokenizer's chat
template); `alpaca` and `flan` render plain text.
"""

from __future__ import annotations

import random
from typing import Any

from align.core.records import Instruction, load_records

# Stanford Alpaca's prompts, verbatim (github.com/tatsu-lab/stanford_alpaca, train.py)
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
# FLAN-style zero-shot: the task stated plainly, the input after it, the answer cue last
FLAN_WITH_INPUT = "{instruction}\n\n{context}\n\nAnswer:\n"
FLAN_NO_INPUT = "{instruction}\n\nAnswer:\n"

TEMPLATES = ("chat", "alpaca", "flan")


def user_text(record: Instruction) -> str:
    """The instruction as one text: earlier turns (multi-turn records) become a transcript."""
    *earlier, last = record.messages
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in earlier if m["role"] != "system"]
    return "\n".join(lines + [last["content"]])


def to_chat(record: Instruction, system_prompt: str | None = None) -> dict[str, Any]:
    messages = [dict(m) for m in record.messages]
    if record.context:
        messages[-1]["content"] = f"{messages[-1]['content']}\n\n{record.context}"
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return {"prompt": messages, "completion": [{"role": "assistant", "content": record.response}]}


def to_text(record: Instruction, template: str) -> dict[str, Any]:
    with_input, no_input = (ALPACA_WITH_INPUT, ALPACA_NO_INPUT) if template == "alpaca" else (FLAN_WITH_INPUT, FLAN_NO_INPUT)
    form = with_input if record.context else no_input
    return {"prompt": form.format(instruction=user_text(record), context=record.context), "completion": record.response}


def to_example(record: Instruction, template: str, system_prompt: str | None = None) -> dict[str, Any]:
    if template == "chat":
        return to_chat(record, system_prompt)
    if template in ("alpaca", "flan"):
        return to_text(record, template)
    raise ValueError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")


def mix(sources: list[tuple[list[Instruction], float]], seed: int) -> list[Instruction]:
    """Take `weight` x len(records) from each source (sampled below 1, repeated above), shuffled.

    Deterministic for a seed, so a resumed run sees the same data order.
    """
    rng = random.Random(seed)
    mixed: list[Instruction] = []
    for records, weight in sources:
        whole, frac = divmod(weight, 1.0)
        mixed.extend(records * int(whole))
        mixed.extend(rng.sample(records, round(frac * len(records))))
    rng.shuffle(mixed)
    return mixed


def load_sft_examples(config) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read, validate, mix and split the data of an SFTConfig; (train, eval) TRL examples.

    Every file is validated before any is used, so bad data fails before a model loads.
    """
    data = config.data
    sources = [(load_records(src.path, "instructions"), src.weight) for src in data.train]
    held_out = load_records(data.eval, "instructions") if data.eval else None
    mixed = mix(sources, config.training.seed)
    if held_out is None:
        n_eval = max(1, round(data.eval_fraction * len(mixed))) if data.eval_fraction > 0 and len(mixed) > 1 else 0
        held_out, mixed = mixed[:n_eval], mixed[n_eval:]
    if data.max_records:
        mixed = mixed[: data.max_records]
    convert = lambda rs: [to_example(r, data.template, data.system_prompt) for r in rs]  # noqa: E731
    return convert(mixed), convert(held_out)
