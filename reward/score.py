"""Load a trained reward model and score (prompt, completion) pairs; used by PPO and evaluation.

A reward directory holds the weights (`adapter/` for LoRA with its head, `model/` for the head
alone or a full model), the tokenizer, `align_base.json` (which base, how loaded) and
`normaliser.json` (mean/std of rewards on a reference set), so callers get normalised rewards.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from align.core import modeling, rundir
from align.core.errors import AlignError

NORMALISER = "normaliser.json"
HEAD_FILE = "score.safetensors"


def conversation_text(tokenizer: Any, prompt: tuple | list, completion: str) -> str:
    """The text a reward model reads: the chat-formatted conversation, ending at the final EOS.

    The trailing newline some chat templates add after EOS is dropped, so the text matches what a
    policy generates (query + response up to EOS) and PPO can reuse its token ids.
    """
    messages = [*prompt, {"role": "assistant", "content": completion}]
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False).rstrip("\n")
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(turns) + (tokenizer.eos_token or "")


def ending_where_read(chat_template: str) -> str:
    """The chat template that renders a whole conversation exactly as conversation_text does, the trailing
    newline after the final EOS dropped, and a generation prompt as before: saved with a reward model, it
    lets `tokenizer.apply_chat_template(messages)` anywhere read the reward at the token align trained on."""
    return ("{% set rendered %}" + chat_template
            + "{% endset %}{{ rendered if add_generation_prompt else rendered.rstrip('\\n') }}")


def encode(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, Any]:
    """Right-padded batch; over-long texts lose their start, so the scored end survives."""
    tokenizer.truncation_side = "left"
    return tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                     add_special_tokens=False)


def token_lengths(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, unpadded, truncated as `encode` does (the start is dropped)."""
    tokenizer.truncation_side = "left"
    return tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=False)["input_ids"]


def pad(tokenizer: Any, ids: list[list[int]]) -> dict[str, Any]:
    """Right-padded batch of token ids, as `encode` pads texts."""
    return tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")


def score_texts(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 16,
                max_tokens: int | None = None):
    """Raw rewards of chat-formatted texts, without gradients, as a float32 CPU tensor (N,).

    Batches of alike lengths, at most `batch_size` texts and, when given, `max_tokens` padded tokens each."""
    import torch

    from align.core.token_batches import token_batches

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.zeros(len(texts))
    ids = token_lengths(tokenizer, texts, max_length)
    lengths = [len(i) for i in ids]
    batches = (token_batches(lengths, max_tokens, batch_size) if max_tokens
               else length_batches(lengths, batch_size))
    with torch.inference_mode():
        for batch_indices in batches:
            batch = pad(tokenizer, [ids[i] for i in batch_indices]).to(device)
            out[batch_indices] = model(**batch).logits[:, 0].float().cpu()
    model.train(was_training)
    return out


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices 0..N-1 in batches of alike lengths, longest first: a batch pads to its longest member,
    so mixing long and short texts computes padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def weights_dir(path: str | Path) -> Path:
    """Accept a reward stage directory or the weights directory inside it, checked: its base record and
    normaliser read (the small files first, so a damaged one is named), and safetensors weights there;
    peft and transformers would fall back to a pickled .bin, which runs code when loaded."""
    path = Path(path)
    safetensors = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json", HEAD_FILE)
    for candidate in (path, path / rundir.ADAPTER, path / rundir.MODEL):
        if (candidate / modeling.BASE_FILE).exists():
            modeling.recorded_base(candidate)
            read_normaliser(candidate / NORMALISER)
            if not any((candidate / name).is_file() for name in safetensors):
                raise AlignError(f"{candidate}: no safetensors weights; align loads weights only from safetensors "
                                 f"(a pickled .bin is refused)")
            return candidate
    raise AlignError(f"{path}: not a reward model (no {modeling.BASE_FILE} in it or in its adapter/ or model/)")


@dataclass
class Normaliser:
    mean: float = 0.0
    std: float = 1.0

    def __call__(self, raw):
        return (raw - self.mean) / self.std

    @classmethod
    def fit(cls, rewards: list[float]) -> "Normaliser":
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
        return cls(mean, std if std > 1e-8 else 1.0)


class RewardModel:
    """A scalar reward r(x, y), raw and normalised."""

    def __init__(self, model: Any, tokenizer: Any, normaliser: Normaliser, max_length: int = 512):
        self.model, self.tokenizer, self.normaliser, self.max_length = model, tokenizer, normaliser, max_length

    @classmethod
    def load(cls, path: str | Path, max_length: int = 512) -> "RewardModel":
        directory = weights_dir(path)
        base = modeling.recorded_base(directory)
        normaliser = read_normaliser(directory / NORMALISER)  # the small files first: a damaged one fails fast
        config = modeling.ModelConfig(name=base["resolved"], quantization=base["quantization"],
                                      tuning="lora" if base["tuning"] == "prompt_tuning" else base["tuning"])
        tokenizer = modeling.load_tokenizer(str(directory))
        if base["tuning"] == "full":
            config.name = str(directory)
        model = modeling.load_base(config, tokenizer, head="score")
        if (directory / "adapter_config.json").exists():
            model = modeling.load_adapter(model, str(directory), trainable=False)
        elif (directory / HEAD_FILE).exists():
            from safetensors.torch import load_file

            model.score.load_state_dict(load_file(directory / HEAD_FILE))
        return cls(model.eval(), tokenizer, normaliser, max_length)

    def score_texts(self, texts: list[str], batch_size: int = 16, max_tokens: int | None = None):
        """Raw rewards of chat-formatted texts, as a float32 CPU tensor (N,)."""
        return score_texts(self.model, self.tokenizer, texts, self.max_length, batch_size, max_tokens)

    def normalised(self, raw: Callable[[], Any]) -> Any:
        """The normalised rewards of `raw()`, the raw rewards (N,) a scoring function gets from `self.model`
        (an ensemble runs it once per member: reward.members.RewardEnsemble)."""
        return self.normaliser(raw())

    def score(self, prompts: list, completions: list[str], batch_size: int = 16):
        """Raw rewards r(x, y) for parallel lists of prompts (message lists) and completions."""
        texts = [conversation_text(self.tokenizer, p, c) for p, c in zip(prompts, completions)]
        return self.score_texts(texts, batch_size)


def read_normaliser(path: Path) -> Normaliser:
    """The saved mean/std; none saved means raw rewards. A damaged file is an error, never a guess."""
    if not path.exists():
        return Normaliser()
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        normaliser = Normaliser(float(body["mean"]), float(body["std"]))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise AlignError(f"{path}: not a normaliser (expected {{\"mean\": number, \"std\": number}}): {e}") from None
    if not (math.isfinite(normaliser.mean) and math.isfinite(normaliser.std) and normaliser.std > 0):
        raise AlignError(f"{path}: mean must be finite and std > 0, got {normaliser.mean}, {normaliser.std}")
    return normaliser


def score_file(model_path: str, data_path: str, out_path: str, batch_size: int = 16, objective: str = "mean",
               uwo_lambda: float = 1.0) -> int:
    """Add `reward` and `reward_normalised` to each record of a prompts-with-responses file.

    A record holds `prompt` (or `messages`) and `response`/`completion`, or a list `completions`,
    or `chosen` and `rejected`; every completion it holds is scored. An ensemble's reward is its
    `objective` over the members' normalised rewards, so both fields hold it.
    """
    from align.core.readers import read_rows
    from align.core.record_fields import Bad, completion_field, prompt_field
    from align.core.errors import DataError

    if Path(out_path).is_dir():
        raise AlignError(f"{out_path}: is a directory; give the output file's name")
    rows, unreadable = read_rows(data_path)
    problems = list(unreadable)
    jobs = []  # (row index, field, position or None, prompt, completion)
    for i, row in enumerate(rows):
        d = row.data
        try:
            prompt = prompt_field(d, "messages" if "messages" in d and "prompt" not in d else "prompt")
            fields = [f for f in ("response", "completion", "chosen", "rejected") if f in d]
            if "completions" in d:
                if not isinstance(d["completions"], list) or not d["completions"]:
                    raise Bad("completions", "expected a non-empty list")
                for k, c in enumerate(d["completions"]):
                    jobs.append((i, "completions", k, prompt, completion_field(d["completions"], k, f"completions[{k}]", allow_empty=True)))
            elif fields:
                jobs += [(i, f, None, prompt, completion_field(d, f, allow_empty=True)) for f in fields]
            else:
                raise Bad(None, 'no completion to score: expected "response", "completion", "completions" or "chosen"/"rejected"')
        except Bad as e:
            problems.append(f"{row.source}: {e}")
    if problems:
        raise DataError(problems, total=len(rows) + len(unreadable))
    if not jobs:
        raise DataError([f"{data_path}: no records"])
    from align.reward import members  # it builds on this module

    reward_model = members.load(model_path, objective, uwo_lambda)
    raw = reward_model.score([j[3] for j in jobs], [j[4] for j in jobs], batch_size).tolist()
    records = [dict(row.data) for row in rows]
    for (i, field, k, _, _), r in zip(jobs, raw):
        name = "reward" if field in ("response", "completion", "completions") else f"reward_{field}"
        value, norm = round(r, 6), round(reward_model.normaliser(r), 6)
        if k is None:
            records[i][name], records[i][f"{name}_normalised"] = value, norm
        else:
            records[i].setdefault(name, []).append(value)
            records[i].setdefault(f"{name}_normalised", []).append(norm)
    rundir.write_text_atomic(Path(out_path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return len(jobs)
