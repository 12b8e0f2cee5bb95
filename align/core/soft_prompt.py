"""A prompt-tuned model run as plain tokens: its soft prompt becomes rows appended to the base's input
embeddings, and their token ids go before every prompt.

Why not peft's own forward: with the transformers 5.x / peft 0.21 pair we pin, `PeftModel.generate` of a
prompt-tuned model counts the cache positions without the virtual tokens, and greedy answers turn to noise
("ToL toL toHGUGUHU" where the base says "To add 7 and 5, ..."), while its teacher-forced loss looks normal.
As tokens, the soft prompt goes through the model's own generate, KV cache and log-prob passes like any
prompt text: a soft prompt initialised from a text answers exactly as that text in the prompt does
(tests/core/test_soft_prompt.py). With peft alone, the same holds when generating from `inputs_embeds`
(README, "Prompt tuning").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

WEIGHTS = "adapter_model.safetensors"


def load_soft_prompt(adapter_dir: str | Path) -> Any:
    """The (n virtual tokens, hidden size) embeddings a prompt-tuning adapter saved."""
    from safetensors.torch import load_file

    return load_file(str(Path(adapter_dir) / WEIGHTS))["prompt_embeddings"]


def add_virtual_tokens(model: Any, embeddings: Any) -> list[int]:
    """Append `embeddings` as new rows of `model`'s input embeddings; returns their token ids, to put before
    every prompt. The output head keeps its rows (a tied one included: the input side gets a copy), so no
    answer can contain a virtual token."""
    import torch

    table = model.get_input_embeddings()
    old = table.weight.detach()
    extended = torch.nn.Embedding(old.shape[0] + embeddings.shape[0], old.shape[1], device=old.device, dtype=old.dtype)
    extended.weight.data = torch.cat([old, embeddings.to(device=old.device, dtype=old.dtype)])
    extended.requires_grad_(False)
    model.set_input_embeddings(extended)
    return list(range(old.shape[0], old.shape[0] + embeddings.shape[0]))


def nearest_tokens(embeddings: Any, table: Any, tokenizer: Any, k: int = 5) -> list[list[dict[str, Any]]]:
    """For each soft-prompt vector, the `k` vocabulary tokens whose input embeddings are nearest by cosine
    similarity: what a soft prompt can be read as (its vectors need not be near any token)."""
    import torch

    soft = torch.nn.functional.normalize(embeddings.detach().float(), dim=-1)  # (n, d)
    vocab = torch.nn.functional.normalize(table.detach().float(), dim=-1)  # (V, d)
    scores, ids = (soft @ vocab.T).topk(k, dim=-1)  # (n, k)
    return [[{"token": tokenizer.convert_ids_to_tokens(i), "text": tokenizer.decode([i]), "id": i,
              "cosine": round(s, 4)} for s, i in zip(row_scores, row_ids)]
            for row_scores, row_ids in zip(scores.tolist(), ids.tolist())]


def readable(nearest: list[list[dict[str, Any]]], shown: int = 8) -> str:
    """The first `shown` virtual tokens as their nearest tokens, with the cosine: `'Answer' (0.91) ...`."""
    words = [f"{row[0]['text']!r} ({row[0]['cosine']:.2f})" for row in nearest[:shown]]
    return " ".join(words) + (" ..." if len(nearest) > shown else "")
