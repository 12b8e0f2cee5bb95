"""Write the demo data set into data/demo/ (deterministic: the same seed gives the same bytes).

    python -m align.demo.build [OUT_DIR]

Files (one JSON record a line; prompts never repeat across files):
    sft.jsonl        400 instructions, messages shape, right answers, 60% padded with a stock sentence
    rankings.jsonl   300 prompts, 2-4 responses each ranked by the demo rule
    prompts.jsonl    200 prompts for PPO rollouts
    heldout.jsonl     60 prompts with a reference answer and their task, for evaluation
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from align.demo.tasks import FILLERS, Task, make_task, padded, ranked_variants

SEED = 20261125
SIZES = {"sft": 400, "rankings": 300, "prompts": 200, "heldout": 60}
# The demonstrator is chatty: it pads most right answers with one stock sentence, while the
# rankings prefer the concise answer. SFT imitates the padding; RLHF on the rankings removes it,
# which the gold judge (1.0 concise, 0.5 padded) and the reward model both see.
CHATTY = (0.6, FILLERS[0])


def demonstration(task: Task, rng: random.Random) -> str:
    share, filler = CHATTY
    return padded(task.response, filler) if rng.random() < share else task.response


def unique_tasks(n: int, rng: random.Random) -> list[Task]:
    seen, tasks = set(), []
    while len(tasks) < n:
        task = make_task(rng)
        if task.prompt not in seen and task.wrong != task.response:
            seen.add(task.prompt)
            tasks.append(task)
    return tasks


def ranking_record(task: Task, rng: random.Random) -> dict:
    variants = ranked_variants(task, rng)
    chosen = rng.sample(variants, rng.choice([2, 3, 4, 4]))
    order = sorted({rank for _, rank in chosen})
    return {
        "prompt": task.prompt,
        "completions": [text for text, _ in chosen],
        "ranks": [order.index(rank) for _, rank in chosen],  # dense: 0 best
    }


def build(out_dir: Path) -> dict[str, int]:
    rng = random.Random(SEED)
    chatty = random.Random(SEED + 1)  # its own stream: the other files stay as they were
    tasks = unique_tasks(sum(SIZES.values()), rng)
    parts, start = {}, 0
    for name, size in SIZES.items():
        parts[name], start = tasks[start:start + size], start + size
    records = {
        "sft": [{"messages": [{"role": "user", "content": t.prompt}, {"role": "assistant", "content": demonstration(t, chatty)}]}
                for t in parts["sft"]],
        "rankings": [ranking_record(t, rng) for t in parts["rankings"]],
        "prompts": [{"prompt": t.prompt} for t in parts["prompts"]],
        "heldout": [{"prompt": t.prompt, "reference": t.response, "task": t.family} for t in parts["heldout"]],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in records.items():
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (out_dir / f"{name}.jsonl").write_text(text, encoding="utf-8")
    return {name: len(rows) for name, rows in records.items()}


if __name__ == "__main__":
    counts = build(Path(sys.argv[1] if len(sys.argv) > 1 else "data/demo"))
    print(json.dumps(counts))
