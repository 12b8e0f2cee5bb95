"""SFT step time and peak memory: full fine-tuning, LoRA and QLoRA on SmolLM2-135M, one batch (issue #5).

    .venv/bin/python -m bench.sft_memory [--steps 2] [--batch-size 8]

Each mode runs in a process of its own. The model is built exactly as stage 1 builds it
(modeling.load_base + modeling.attach_tuning: fp32 on CPU, LoRA r=16 on all linear layers,
NF4 with double quantisation for QLoRA); the step is a plain forward / backward / AdamW step on
the same fixed batch of 8 chat-formatted demo SFT records (loss on every token: the cost of a step
does not depend on which tokens carry loss), so only the tuning mode differs. TRL's SFTTrainer
adds the same data-loading and logging overhead to every mode and is left out. One warm-up step,
then the median of the timed steps.

Figures per mode: trainable and total parameters; weight bytes per parameter (the stored weights,
4-bit blocks and their constants included); peak RSS of the process; the training peak (the
high-water mark from the first step on, loading's transient peak excluded) and that peak above
the process's size before the model loaded, per model parameter.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench import common

MODES = {
    "full": {"quantization": "none", "tuning": "full"},
    "lora": {"quantization": "none", "tuning": "lora"},
    "qlora": {"quantization": "nf4", "tuning": "lora"},
}


def weight_bytes(model) -> int:
    """Bytes the weights occupy: 4-bit tensors are uint8 storage plus their quantisation state."""
    total = 0
    for param in model.parameters():
        total += param.numel() * param.element_size()
        state = getattr(param, "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
            if getattr(state, "state2", None) is not None:  # double quantisation: the constants' constants
                total += state.state2.absmax.numel() * state.state2.absmax.element_size()
                total += state.state2.code.numel() * state.state2.code.element_size()
    return total


def child(mode: str, steps: int, batch_size: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from align.core import modeling
    from align.core.records import load_records
    from bench.workloads import DEMO

    before_load = common.current_rss_mb()
    config = modeling.ModelConfig(name="smollm2-135m-instruct", **MODES[mode])
    config.lora.dropout = 0.0  # dropout draws random masks: keep every mode's step deterministic
    tokenizer = modeling.load_tokenizer(modeling.resolve_model_path(config.name))
    model = modeling.attach_tuning(modeling.load_base(config, tokenizer), config)
    model.train()
    trainable, total = modeling.count_parameters(model)
    records = load_records(DEMO / "sft.jsonl", "instructions")[:batch_size]
    texts = [tokenizer.apply_chat_template([*r.messages, {"role": "assistant", "content": r.response}], tokenize=False)
             for r in records]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.0)
    loaded = common.current_rss_mb()
    common.reset_peak_rss()
    times, losses = [], []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    train_peak = common.hwm_mb()
    stored = weight_bytes(model)
    common.report({
        "mode": mode, "step_s": common.median(times[1:]), "step_times_s": times, "losses": losses,
        "trainable_params": trainable, "total_params": total, "weight_bytes_per_param": stored / total,
        "rss_before_load_mb": before_load, "rss_after_load_mb": loaded, "train_peak_rss_mb": train_peak,
        "train_bytes_per_param": (train_peak - before_load) * 2**20 / total,
        "tokens_per_step": int(batch["attention_mask"].sum()), "sequence_length": batch["input_ids"].shape[1],
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.steps, args.batch_size, args.threads)
    machine = common.machine()
    results = {}
    for mode in MODES:
        argv = [sys.executable, "-m", "bench.sft_memory", "--child", mode, "--steps", str(args.steps),
                "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
        results[mode] = common.run_child(argv, env={"OMP_NUM_THREADS": str(args.threads)})
        print(f"# sft {mode}: {results[mode]['process_wall_s']} s", file=sys.stderr)
    full = results["full"]
    for mode, r in results.items():
        common.emit({
            "workload": f"sft_{mode}",
            "step_s": round(r["step_s"], 3),
            "peak_rss_mb": r["peak_rss_mb"],
            "train_peak_rss_mb": round(r["train_peak_rss_mb"], 1),
            "trainable_params": r["trainable_params"],
            "total_params": r["total_params"],
            "weight_bytes_per_param": round(r["weight_bytes_per_param"], 3),
            "train_bytes_per_param": round(r["train_bytes_per_param"], 2),
            "ratios": {"time_vs_full": round(r["step_s"] / full["step_s"], 3),
                       "mem_vs_full": round(r["peak_rss_mb"] / full["peak_rss_mb"], 3)},
        })
    common.save("sft_memory", {
        "machine": machine,
        "versions": common.versions("torch", "transformers", "peft", "bitsandbytes"),
        "settings": {"model": "smollm2-135m-instruct", "batch_size": args.batch_size, "timed_steps": args.steps,
                     "threads": args.threads, "modes": MODES, "lora": "r=16, alpha=32, all linear layers"},
        "note": "2-core machine shared with other engineers' jobs; each mode in its own process, one warm-up step "
                "then the median of the timed steps; peak RSS via wait4 of each child.",
        "results": {mode: r for mode, r in results.items()},
    })


if __name__ == "__main__":
    main()
