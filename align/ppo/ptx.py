"""PPO-ptx (InstructGPT, eq. 2): a language-modelling loss on SFT conversations beside the PPO loss,
so the policy keeps what it was fine-tuned on."""

from __future__ import annotations

from typing import Any

import torch

from align.core.distributed import World
from align.core.records import load_records
from align.ppo.models import PolicyStack


def conversation_texts(records: list, tokenizer: Any) -> list[str]:
    """Whole SFT conversations, the response included, as the chat template writes them."""
    return [tokenizer.apply_chat_template([*r.messages, {"role": "assistant", "content": r.response}], tokenize=False)
            if tokenizer.chat_template else f"{r.messages[-1]['content']}\n{r.response}{tokenizer.eos_token}"
            for r in records]


class PtxData:
    """The PPO-ptx texts, taken in turn; `cursor` (texts taken by all processes so far) goes into checkpoints."""

    def __init__(self, path: str, tokenizer: Any, max_length: int, world: World):
        self.texts = conversation_texts(load_records(path, "instructions"), tokenizer)
        self.tokenizer, self.max_length, self.world = tokenizer, max_length, world
        self.cursor = 0

    def loss(self, stack: PolicyStack, n: int) -> torch.Tensor:
        """Mean token cross-entropy of the policy on this process's n of the next n x processes texts
        (cycling through them)."""
        first = self.cursor + self.world.rank * n
        texts = [self.texts[(first + k) % len(self.texts)] for k in range(n)]
        self.cursor += n * self.world.size
        self.tokenizer.padding_side = "right"
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length,
                             add_special_tokens=False).to(stack.device)
        self.tokenizer.padding_side = "left"  # as generation needs it
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        stack.use("policy")
        return stack.peft(**enc, labels=labels).loss
