"""Loading a tokenizer, with the fixes every stage needs: a pad token distinct from EOS, right padding."""

from __future__ import annotations

from typing import TYPE_CHECKING

from align.core.errors import AlignError
from align.core.model_paths import first_line

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# existing special tokens that can serve as padding, in order of preference
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<pad>", "[PAD]", "<|pad|>", "<|endoftext|>", "<unk>")


def load_tokenizer(path: str, trust_remote_code: bool = False) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise AlignError(f"cannot load a tokenizer from {path!r}: {first_line(e)}") from None
    fix_pad_token(tokenizer)
    tokenizer.padding_side = "right"
    return tokenizer


def fix_pad_token(tokenizer: "PreTrainedTokenizerBase") -> bool:
    """Give the tokenizer a pad token distinct from EOS; True if a token had to be added.

    With pad == EOS, masking pads also masks the real EOS, and the model never learns to stop.
    """
    eos = tokenizer.eos_token
    if tokenizer.pad_token is not None and tokenizer.pad_token != eos:
        return False
    vocab = tokenizer.get_vocab()
    for candidate in PAD_CANDIDATES:
        if candidate in vocab and candidate != eos and candidate != tokenizer.bos_token:
            tokenizer.pad_token = candidate
            return False
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return True
