"""Instruction records -> TRL prompt/completion examples, through a prompt template; mixing; fitting
the examples to training.max_length.

Every template yields TRL's prompt-completion shape, so SFTTrainer puts the loss on the
completion only. `chat` keeps conversations as message lists (TRL applies the tokenizer's chat
template); `alpaca` and `flan` render plain text.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Iterable

from align.core import distributed, modeling
from align.core.errors import AlignError
from align.core.records import Instruction, load_records

log = logging.getLogger(__name__)

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


class Examples(list):
    """One split's TRL examples, with how many of its records were longer than training.max_length:
    `truncated` are among the examples (TRL cuts them), `dropped` are not."""

    def __init__(self, examples: Iterable[dict[str, Any]] = (), *, truncated: int = 0, dropped: int = 0):
        super().__init__(examples)
        self.truncated = truncated
        self.dropped = dropped


def load_sft_examples(config) -> tuple[Examples, Examples]:
    """Read, validate, mix and split the data of an SFTConfig, and fit it to training.max_length;
    (train, eval) TRL examples.

    Every file is validated before any is used, and the records are measured with the tokenizer
    alone, so bad data, or data with nothing left to learn, fails before a model loads.
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
    train, held_out = convert(mixed), convert(held_out)
    modeling.check_model(config.model)  # a wrong path is refused at once, not after the tokenizer loads
    tokenizer = template_tokenizer(config)
    max_length = config.training.max_length
    eval_name = "data.eval" if data.eval else f"held-out records (data.eval_fraction={data.eval_fraction})"
    return (fit_to_length(train, tokenizer, max_length, data.too_long, "data.train"),
            fit_to_length(held_out, tokenizer, max_length, data.too_long, eval_name, held_out=True))


def template_tokenizer(config) -> Any:
    """The tokenizer training will use, refused early when the chat template is asked of a model without one."""
    tokenizer = modeling.load_tokenizer(modeling.resolve_model_path(config.model.name), config.model.trust_remote_code)
    if config.data.template == "chat" and not tokenizer.chat_template:
        raise AlignError(f"model {config.model.name!r} has no chat template; set data.template=alpaca or flan")
    return tokenizer


def token_lengths(example: dict[str, Any], tokenizer: Any) -> tuple[int, int]:
    """(prompt tokens, prompt + completion tokens) of a TRL example, tokenised as TRL's SFTTrainer
    tokenises it (trl 1.16, `SFTTrainer._prepare_dataset`): a conversation through the chat template,
    the prompt alone with the generation prompt; plain text with EOS added to the completion. The
    completion starts where the two token lists part (TRL's `common_prefix_length`)."""
    if isinstance(example["prompt"], list):
        prompt = tokenizer.apply_chat_template(example["prompt"], tokenize=True, return_dict=True,
                                               add_generation_prompt=True)["input_ids"]
        whole = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=True,
                                              return_dict=True)["input_ids"]
    else:
        completion = example["completion"]
        if not completion.endswith(tokenizer.eos_token):
            completion += tokenizer.eos_token
        prompt = tokenizer(text=example["prompt"])["input_ids"]
        whole = tokenizer(text=example["prompt"] + completion)["input_ids"]
    shared = 0
    for a, b in zip(prompt, whole):
        if a != b:
            break
        shared += 1
    return shared, len(whole)


def fit_to_length(examples: list[dict[str, Any]], tokenizer: Any, max_length: int, too_long: str,
                  name: str, held_out: bool = False) -> Examples:
    """The examples to train on: those that fit in max_length tokens, and the longer ones when
    `too_long` is "truncate" and a response token survives the cut.

    TRL truncates every sequence to max_length and then drops, without a word, those left with no
    completion token; deciding here, with its tokenisation, makes the counts ours to report (TRL then
    drops none). A record whose prompt alone fills max_length is dropped whatever `too_long` says."""
    kept, truncated, prompt_alone, shortest = [], 0, 0, None
    for example in examples:
        prompt, total = token_lengths(example, tokenizer)
        if total <= max_length:
            kept.append(example)
            continue
        shortest = total if shortest is None else min(shortest, total)
        if prompt >= max_length:
            prompt_alone += 1
        elif too_long == "truncate":
            kept.append(example)
            truncated += 1
    fitted = Examples(kept, truncated=truncated, dropped=len(examples) - len(kept))
    if examples and not kept:
        raise AlignError(f"{name}: all {len(examples)} records are longer than training.max_length={max_length} "
                         f"tokens (prompt alone: {prompt_alone}), so none is left to "
                         f"{'evaluate' if held_out else 'train on'}; "
                         + _advice(max_length, too_long, shortest, len(examples) - prompt_alone, held_out))
    if (truncated or fitted.dropped) and distributed.world().is_main:
        log.warning("%s: %d of %d records are longer than training.max_length=%d tokens: %d truncated, %d dropped "
                    "(prompt alone: %d; data.too_long=%s)", name, truncated + fitted.dropped, len(examples),
                    max_length, truncated, fitted.dropped, prompt_alone, too_long)
    return fitted


def _advice(max_length: int, too_long: str, shortest: int, prompt_fits: int, held_out: bool) -> str:
    ways = [f"raise training.max_length (the shortest record has {shortest} tokens)"]
    if too_long == "drop" and prompt_fits:
        ways.append(f"set data.too_long=truncate to train on the first {max_length} tokens of the {prompt_fits} "
                    f"whose prompt fits")
    if held_out:
        ways.append("hold out no records (data.eval unset and data.eval_fraction=0)")
    return ", or ".join(ways)
