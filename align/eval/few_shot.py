"""The in-context baseline (`eval.few_shot: K`): the reference base model with K demonstrations from the SFT
data before every prompt, as a row `base_<K>shot` beside the fine-tuned ones. It answers the same prompts with
the same seeds, and the same scorers judge it: is fine-tuning worth it over prompting?

The demonstrations are earlier turns of the conversation (user, then the demonstrated answer), as a chat model
is prompted in context; the same K for every prompt, drawn with the evaluation's seed, none of them an
evaluated prompt.
"""

from __future__ import annotations

import random
from typing import Any

from align.core.errors import ConfigError
from align.core.records import Prompt, load_records


def row_name(k: int) -> str:
    return f"base_{k}shot"


def demonstrations(path: str, k: int, prompts: list[Prompt], seed: int) -> tuple[dict[str, Any], ...]:
    """K demonstrations from the instructions at `path`, as chat turns; an evaluated prompt is never one."""
    asked = {p.messages[-1]["content"].strip() for p in prompts}
    pool = [r for r in load_records(path, "instructions") if r.messages[-1]["content"].strip() not in asked]
    if len(pool) < k:
        raise ConfigError(f"few_shot: {k} demonstrations wanted, but {path} holds {len(pool)} that are not "
                          f"evaluated prompts")
    turns: list[dict[str, Any]] = []
    for record in random.Random(seed).sample(pool, k):
        messages = [dict(m) for m in record.messages if m["role"] != "system"]
        if record.context:  # Alpaca's input / Dolly's context, after the instruction (as SFT formats it)
            messages[-1]["content"] = f"{messages[-1]['content']}\n\n{record.context}"
        turns += [*messages, {"role": "assistant", "content": record.response}]
    return tuple(turns)
