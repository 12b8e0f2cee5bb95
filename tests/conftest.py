"""One fixture builds the tiny model: a random 2-layer Llama and a byte-level BPE tokenizer
trained in-process on the demo prompts, saved to a temp dir so loaders take the local-path route."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# one thread per process: the tiny models gain nothing from more, and on a busy machine torch's
# threads spin against each other (16 SFT steps took 84 s with two threads under load, 0.9 s alone)
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from align.core.tiny import build_tiny_llama, demo_texts

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), demo_texts())


@pytest.fixture
def write_jsonl(tmp_path):
    def write(name: str, rows: list, raw: bytes | None = None) -> Path:
        path = tmp_path / name
        if raw is not None:
            path.write_bytes(raw)
        else:
            path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
        return path

    return write
