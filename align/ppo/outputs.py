"""What PPO writes besides metrics and checkpoints: samples of the rollouts while it trains, and at
the end the aligned policy as a plain LoRA adapter (peft alone loads it) with the value head."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from align.core import rundir
from align.core.model_config import ModelConfig
from align.ppo.models import POLICY, PolicyStack
from align.ppo.rollout import Rollout, decode_responses

SAMPLES = "samples.jsonl"
VALUE_HEAD = "value_head.safetensors"


def write_samples(path: Path, update: int, prompts: list, rollout: Rollout, tokenizer: Any, n: int = 4) -> None:
    """The first n responses of this update's rollout, with the scores they were trained on."""
    texts = decode_responses(rollout, tokenizer)[:n]
    rows = [{"update": update, "prompt": record.messages[-1]["content"], "response": text, "score": round(score, 4)}
            for record, text, score in zip(prompts, texts, rollout.scores.tolist())]
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def save_policy(out: rundir.StageDir, stack: PolicyStack, tokenizer: Any, model: ModelConfig) -> None:
    """The policy adapter, whole or not at all, with the tokenizer and the base's record; the value head."""
    from safetensors.torch import save_file

    from align.core import modeling

    with rundir.replace_dir(out.file(rundir.ADAPTER)) as target:
        stack.peft.save_pretrained(target, selected_adapters=[POLICY])
        nested = target / POLICY  # peft nests non-default adapters; flatten for plain loading
        if nested.is_dir():
            for item in nested.iterdir():
                item.replace(target / item.name)
            nested.rmdir()
        tokenizer.padding_side = "right"
        tokenizer.save_pretrained(target)
        modeling.save_base_record(target, model)
    tmp = out.file(f".{VALUE_HEAD}.tmp")
    save_file({k: v.detach().cpu() for k, v in stack.value_head.state_dict().items()}, tmp)
    tmp.replace(out.file(VALUE_HEAD))
