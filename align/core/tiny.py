"""`tiny-random-llama`: a random 2-layer Llama with a byte-level BPE tokenizer trained on the demo
texts. It makes every stage run in seconds on a CPU: the `tiny` pipeline preset and the tests use it.
It learns the shape of the task, never anything worth keeping."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

NAME = "tiny-random-llama"
DEMO_DATA = Path(__file__).resolve().parents[2] / "data" / "demo"
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def demo_texts() -> list[str]:
    """The shipped demo data, line by line: the tokenizer learns the words the demo tasks use."""
    texts = []
    for name in ("sft.jsonl", "rankings.jsonl"):
        path = DEMO_DATA / name
        if path.exists():
            texts.extend(path.read_text(encoding="utf-8").splitlines())
    return texts


def build_tiny_llama(path: Path, texts: Iterable[str], seed: int = 0) -> Path:
    """Write the tokenizer and a random model to `path`; the same texts and seed give the same files."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    # the byte alphabet up front: any text encodes, whatever the training texts held
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(texts), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", unk_token="<|endoftext|>", chat_template=CHATML
    )
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        initializer_range=0.2, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path
