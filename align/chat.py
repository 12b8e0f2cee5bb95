"""`align chat`: a terminal conversation with any model align can name (a base, a stage or run directory, an
adapter, an exported model), through its chat template, the answer's tokens written as they come.

    Chat       the conversation: the model loaded once, the messages so far, one reply at a time
    converse   the read-reply loop: `/reset` starts over, `/exit` (or the end of input) stops
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from align.core.errors import AlignError

COMMANDS = {"/reset": "start a new conversation", "/exit": "leave"}


def model_source(source: str) -> str:
    """A run directory is its aligned policy's stage (align.export.weights_of); anything else as given."""
    path = Path(source).expanduser()
    if (path / "manifest.json").is_file():
        from align.export import weights_of

        return str(weights_of(path).directory)
    return source


class Chat:
    def __init__(self, source: str, *, system: str | None = None, temperature: float = 0.7, top_p: float = 1.0,
                 max_new_tokens: int = 256):
        from align.eval.models import ModelPool, resolve

        if temperature < 0 or not 0 < top_p <= 1 or max_new_tokens < 1:
            raise AlignError("--temperature must be >= 0, --top-p in (0, 1] and --max-new-tokens >= 1")
        spec = resolve("chat", model_source(source))
        self.view = ModelPool({"chat": spec}, "auto").view("chat")
        self.tokenizer = self.view.tokenizer
        if not self.tokenizer.chat_template:
            raise AlignError(f"{source}: its tokenizer has no chat template to hold a conversation with")
        self.system, self.temperature, self.top_p, self.max_new_tokens = system, temperature, top_p, max_new_tokens
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, text: str, emit: Callable[[str], Any]) -> str:
        """The model's answer to `text` after the conversation so far, each piece passed to `emit` as it is decoded."""
        import torch
        from transformers import TextStreamer

        class Streamer(TextStreamer):
            def on_finalized_text(self, piece: str, stream_end: bool = False) -> None:
                if piece:
                    emit(piece)

        self.messages.append({"role": "user", "content": text})
        ids = self.tokenizer.apply_chat_template(self.messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)
        if self.view.prefix:  # a prompt-tuned model's soft prompt, as its virtual tokens (align.core.soft_prompt)
            prefix = torch.tensor([self.view.prefix])
            ids = {"input_ids": torch.cat([prefix, ids["input_ids"]], 1),
                   "attention_mask": torch.cat([torch.ones_like(prefix), ids["attention_mask"]], 1)}
        sampling = ({"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0}
                    if self.temperature > 0 else {"do_sample": False})
        with self.view.active() as model, torch.inference_mode():
            device = next(model.parameters()).device
            out = model.generate(**{k: v.to(device) for k, v in ids.items()}, max_new_tokens=self.max_new_tokens,
                                 eos_token_id=self.view.eos_ids, pad_token_id=self.tokenizer.pad_token_id,
                                 streamer=Streamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True),
                                 **sampling)
        answer = self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        self.messages.append({"role": "assistant", "content": answer})
        return answer


def converse(chat: Chat, read: Callable[[str], str], write: Callable[[str], Any]) -> int:
    """Read a line, write the streamed answer, until /exit or the end of input; returns the turns answered."""
    turns = 0
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            write("\n")
            return turns
        if not line:
            continue
        if line == "/exit":
            return turns
        if line == "/reset":
            chat.reset()
            write("(a new conversation)\n")
            continue
        if line.startswith("/"):
            write(f"(unknown command {line}; " + ", ".join(f"{k}: {v}" for k, v in COMMANDS.items()) + ")\n")
            continue
        write("model> ")
        chat.reply(line, write)
        write("\n")
        turns += 1
