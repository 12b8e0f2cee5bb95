"""What cutting padding saves the PPO update on prompts of varied length: micro-batches of like-length
rows at their own width (`rollout.micro_batches`, `rollout.unpadded_columns`) against micro-batches in
shuffled order at the rollout's width, which is what the update did before 2026-12-02.

    .venv/bin/python -m bench.ppo_padding [--workload smollm2|tiny] [--pairs 2] [--grad-accum 2]

The ppo_vs_trl workload (model, LoRA, reward head, batch 8, mini-batch 4, one epoch), but its
prompts are multi-turn: prompt i carries 0, 2, 4 or 6 earlier exchanges from the demo SFT data
before its demo question, as HH-RLHF's conversations do, so prompts run from 38 to 256 tokens
(the prompt limit). One process and one trainer; after a warm-up update the two ways alternate
update by update, the order flipped each pair. Each update rolls out anew, so both ways see
like batches, not the same one. Figures: the training phase's seconds (`time/training_s`) and the
rows x columns a micro-batch runs. Not part of `make bench` (4-5 minutes on SmolLM2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench import common

HISTORY_TURNS = (0, 2, 4, 6)  # earlier exchanges before prompt i: HISTORY_TURNS[i % 4]


def varied_prompts(n: int) -> list[dict]:
    from bench.workloads import DEMO

    sft = [json.loads(line)["messages"] for line in (DEMO / "sft.jsonl").read_text().splitlines()]
    questions = [json.loads(line)["prompt"] for line in (DEMO / "prompts.jsonl").read_text().splitlines()]
    rows = []
    for i in range(n):
        start = i * max(HISTORY_TURNS)
        history = [m for conversation in sft[start:start + HISTORY_TURNS[i % len(HISTORY_TURNS)]] for m in conversation]
        rows.append({"messages": [*history, {"role": "user", "content": questions[i]}]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="smollm2", choices=["smollm2", "tiny"])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--grad-accum", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    import align.ppo.train as ppo_train
    from align.core import rundir
    from align.core.records import load_records
    from bench import workloads
    from bench.ppo_vs_trl import SETTINGS, our_config

    s = SETTINGS[args.workload]
    started = common.machine()
    with tempfile.TemporaryDirectory(prefix="align-padding-") as tmp:
        prompts = Path(tmp) / "varied.jsonl"
        prompts.write_text("".join(json.dumps(r) + "\n" for r in varied_prompts(s["batch_size"])))
        paths = workloads.prepare(args.workload, Path(tmp))
        config = our_config(paths, s, f"{tmp}/run", f"data.prompts={prompts}", f"training.grad_accum={args.grad_accum}")
        out = rundir.StageDir(config.out_dir)
        out.prepare(overwrite=True, resume=False)
        trainer = ppo_train.PPOTrainer(config, out)
        batch = load_records(config.data.prompts, "prompts")

        cut, unpadded_columns, micro_batches = {}, ppo_train.unpadded_columns, ppo_train.micro_batches
        ways = {
            "like_length_own_width": (micro_batches, unpadded_columns),
            "shuffled_rollout_width": (lambda rows, lengths, size: list(rows.split(size)),
                                       lambda q, r, rows, Q: (slice(0, Q + int(r.max())), slice(0, int(r.max())))),
        }

        def use(way: str) -> None:
            split, columns = ways[way]

            def counted(q, r, rows, Q):
                seq, resp = columns(q, r, rows, Q)
                cut.setdefault(way, []).append(len(rows) * (seq.stop - seq.start))
                return seq, resp

            ppo_train.micro_batches, ppo_train.unpadded_columns = split, counted

        use("like_length_own_width")
        trainer.step(batch)  # warm-up
        cut.clear()
        seconds: dict[str, list[float]] = {way: [] for way in ways}
        lengths = []
        for pair in range(args.pairs):
            for way in (list(ways) if pair % 2 == 0 else list(ways)[::-1]):
                use(way)
                stats, rollout = trainer.step(batch)
                seconds[way].append(round(stats["time/training_s"], 4))
                lengths.append({"prompt": rollout.query_mask.sum(1).tolist(), "response": rollout.response_mask.sum(1).tolist()})
        ppo_train.micro_batches, ppo_train.unpadded_columns = micro_batches, unpadded_columns

    figures = {way: {"training_s": common.median(seconds[way]), "tokens_per_micro_batch": statistics.mean(cut[way]),
                     "raw_training_s": seconds[way]} for way in ways}
    new, old = (figures[w] for w in ways)
    line = {"workload": args.workload, "grad_accum": args.grad_accum, **figures,
            "ratios": {"training_s": round(new["training_s"] / old["training_s"], 3),
                       "tokens_per_micro_batch": round(new["tokens_per_micro_batch"] / old["tokens_per_micro_batch"], 3)}}
    common.emit(line)
    path = common.save(f"ppo_padding-{args.workload}", {"machine": started, "versions": common.versions("torch", "transformers", "peft"),
                                                        "settings": {**s, "grad_accum": args.grad_accum, "pairs": args.pairs},
                                                        "lengths_per_update": lengths, "result": line})
    print(f"# wrote {path}")


if __name__ == "__main__":
    main()
