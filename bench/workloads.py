"""The models, prompts and reward model both PPO trainers are given, written to files once per run
so our trainer and the peer (in its own venv) read the very same weights and token ids.

    tiny      the random 2-layer Llama (hidden 64) and byte-level BPE tokenizer the tests use
              (align.core.tiny, as tests/conftest.py builds it)
    smollm2   the embedded SmolLM2-135M-Instruct (fp32 on CPU)
    smollm2_360m_shape
              SmolLM2-360M's shape (hidden 960, 32 layers), random weights, SmolLM2's tokenizer: a base
              whose copies weigh more against the activations (ppo_memory --workload; not in make bench)
    llama_1b_shape
              Llama-3.2-1B's shape (hidden 2048, 16 layers, GQA 32/8 heads), random weights, SmolLM2's
              tokenizer (ppo_memory --workload; not in make bench)

The reward model is the base with a scalar head drawn from a fixed seed: for the peer a
sequence-classification model (its value model starts as a copy of it, as TRL's PPO example
does), for ours the same head on the shared base with adapters off (`reward_on_base`). Both
read the score at the last real token of the post-norm hidden states, so the two rewards are the
same function of the same tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.common import ROOT

DEMO = ROOT / "data" / "demo"
REWARD_SEED = 1234
# SmolLM2-360M's config.json, where it differs from SmolLM2-135M's
SMOLLM2_360M = {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 15,
                "num_key_value_heads": 5}
# Llama-3.2-1B's shape (its config.json), with SmolLM2's tokenizer and tied embeddings: 1.07 B parameters
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 64}
SHAPES = {"smollm2_360m_shape": SMOLLM2_360M, "llama_1b_shape": LLAMA_1B}


def random_like(out: Path, source: str, shape: dict[str, int]) -> Path:
    """A model of source's architecture and tokenizer in another shape, random-initialised (seed 0)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    config = AutoConfig.from_pretrained(source)
    for key, value in shape.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    GenerationConfig.from_pretrained(source).save_pretrained(out)
    return out


def prepare(workload: str, workdir: Path, n_prompts: int = 8, quantization: str = "none") -> dict[str, Any]:
    """Write the workload's files under workdir; returns their paths and the shared settings.

    `quantization` is the precision the reward head's base is recorded with: PPO reads the reward from
    its own base only when the two match."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from align.core import modeling

    workdir.mkdir(parents=True, exist_ok=True)
    if workload == "tiny":
        from align.core.tiny import build_tiny_llama, demo_texts

        model_path = str(build_tiny_llama(workdir / "tiny-llama", demo_texts()))
    elif workload == "smollm2":
        model_path = modeling.resolve_model_path("smollm2-135m-instruct")
    elif workload in SHAPES:
        # 1.4 GB (360M) or 4.3 GB (1B) of fixed-seed weights: built once beside the workload dirs (one per
        # precision) that share it
        model_dir = workdir.parent / workload
        if not (model_dir / "config.json").exists():
            random_like(model_dir, modeling.resolve_model_path("smollm2-135m-instruct"), SHAPES[workload])
        model_path = str(model_dir)
    else:
        raise ValueError(f"unknown workload {workload!r}")

    # our loader's tokenizer (pad distinct from EOS), saved so the peer loads exactly it
    tokenizer = modeling.load_tokenizer(model_path)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(workdir / "tokenizer")

    # one batch of prompts: every update of both trainers sees the same queries, so the work per
    # update differs only by what is sampled
    lines = (DEMO / "prompts.jsonl").read_text().splitlines()[:n_prompts]
    (workdir / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    prompt_ids = [tokenizer.apply_chat_template([{"role": "user", "content": json.loads(line)["prompt"]}],
                                                tokenize=False, add_generation_prompt=True) for line in lines]
    prompt_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompt_ids]
    (workdir / "prompt_ids.json").write_text(json.dumps(prompt_ids))

    hidden = AutoConfig.from_pretrained(model_path).hidden_size
    generator = torch.Generator().manual_seed(REWARD_SEED)
    head = torch.randn(1, hidden, generator=generator) / hidden**0.5  # rewards of order 1
    reward_dir = workdir / "reward" / "model"
    reward_dir.mkdir(parents=True, exist_ok=True)
    save_file({"weight": head.contiguous()}, reward_dir / "score.safetensors")
    modeling.save_base_record(reward_dir, modeling.ModelConfig(name=model_path, quantization=quantization, tuning="head"))
    paths = {
        "workload": workload,
        "model_path": model_path,
        "tokenizer_path": str(workdir / "tokenizer"),
        "prompts": str(workdir / "prompts.jsonl"),
        "prompt_ids": str(workdir / "prompt_ids.json"),
        "reward_dir": str(workdir / "reward"),
        "reward_head": str(reward_dir / "score.safetensors"),
        "query_tokens": [len(ids) for ids in prompt_ids],
    }
    (workdir / "workload.json").write_text(json.dumps(paths))
    return paths


def paths(workdir: Path) -> dict[str, Any]:
    """What prepare() returned for workdir, read back (by a run in another process)."""
    return json.loads((workdir / "workload.json").read_text())
