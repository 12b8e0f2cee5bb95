"""PPO's LoRA layers through peft, fused (core/fused_lora.py), and fused with bf16 input gradients, on SmolLM2.

    .venv/bin/python -m bench.fused_lora [--quantization none,nf4] [--reps 4]

One process, one thread: a PolicyStack on the embedded SmolLM2-135M-Instruct (LoRA r 16, alpha 32, dropout 0) per
backward precision, and per repetition the policy's and the value's pass forward and back on 4 x 77 tokens (a
SmolLM2 micro-batch of bench/ppo_vs_trl.py), in turn: `peft` (the stack's layers on peft's own forward), `fused`
(backward_precision fp32) and `fused_bf16` (backward_precision bf16). Medians over the repetitions after the first.
Not part of `make bench`; its figures are in bench/README.md (section 1) and align/core/fused_lora.py.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench import common

VARIANTS = ("peft", "fused", "fused_bf16")


def measure(quantization: str, reps: int, model_path: str) -> dict[str, dict[str, float]]:
    import torch

    from align.core import modeling
    from align.core.fused_lora import is_fused
    from align.core.model_config import LoraSettings
    from align.ppo.models import PolicyStack

    tokenizer = modeling.load_tokenizer(model_path)
    model = modeling.ModelConfig(name=model_path, quantization=quantization,
                                 lora=LoraSettings(r=16, alpha=32, dropout=0.0))
    stacks = {precision: PolicyStack(model, tokenizer, None, backward_precision=precision)
              for precision in ("fp32", "bf16")}
    fused = [(m, vars(m)["forward"]) for m in stacks["fp32"].peft.modules()
             if is_fused(vars(m).get("forward"))]
    ids = torch.randint(100, 40000, (4, 77), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)

    def step(stack: PolicyStack) -> float:
        start = time.perf_counter()
        stack.policy_logits(ids, mask, 25).logsumexp(-1).sum().backward()
        stack.values(ids, mask, 25).pow(2).sum().backward()
        stack.peft.zero_grad(set_to_none=True)
        stack.value_head.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(reps):
        for layer, _forward in fused:
            vars(layer).pop("forward")
        seconds["peft"].append(step(stacks["fp32"]))
        for layer, forward in fused:
            layer.forward = forward
        seconds["fused"].append(step(stacks["fp32"]))
        seconds["fused_bf16"].append(step(stacks["bf16"]))
    return {v: {"median_s": round(statistics.median(s[1:]), 3), "runs_s": [round(x, 3) for x in s]}
            for v, s in seconds.items()} | {"fused_layers": len(fused)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantization", default="none,nf4")
    parser.add_argument("--reps", type=int, default=4)
    args = parser.parse_args()
    import torch

    from bench import workloads

    torch.set_num_threads(1)
    machine = common.machine()
    results = []
    with tempfile.TemporaryDirectory(prefix="align-bench-") as tmp:
        model_path = workloads.prepare("smollm2", Path(tmp))["model_path"]
        for quantization in args.quantization.split(","):
            line = {"quantization": quantization, **measure(quantization, args.reps, model_path)}
            common.emit(line)
            results.append(line)
    common.save("fused_lora", {
        "machine": machine, "versions": common.versions("torch", "transformers", "peft", "bitsandbytes"),
        "note": "policy + value forward and back, 4 x 77 tokens, one thread; medians after the first repetition",
        "results": results})


if __name__ == "__main__":
    main()
