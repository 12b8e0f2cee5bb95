"""Write the demo data set into data/demo/ (deterministic: the same seed gives the same bytes).

    python -m align.demo.build [OUT_DIR]

Files (one JSON record a line; prompts never repeat across files):
    sft.jsonl        400 instructions, messages shape, concise right answers
    rankings.jsonl   300 prompts, 2-4 responses each ranked by the demo rule
    prompts.jsonl    200 prompts for PPO rollouts
    heldout.jsonl     60 prompts with a reference answer, for evaluation
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from align.demo.tasks import Task, make_task, ranked_variants

SEED = 20261125
SIZES = {"sft": 400, "rankings": 300, "prompts": 200, "heldout": 60}


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
    tasks = unique_tasks(sum(SIZES.values()), rng)
    parts, start = {}, 0
    for name, size in SIZES.items():
        parts[name], start = tasks[start:start + size], start + size
    records = {
        "sft": [{"messages": [{"role": "user", "content": t.prompt}, {"role": "assistant", "content": t.response}]}
                for t in parts["sft"]],
        "rankings": [ranking_record(t, rng) for t in parts["rankings"]],
        "prompts": [{"prompt": t.prompt} for t in parts["prompts"]],
        "heldout": [{"prompt": t.prompt, "reference": t.response} for t in parts["heldout"]],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in records.items():
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (out_dir / f"{name}.jsonl").write_text(text, encoding="utf-8")
    return {name: len(rows) for name, rows in records.items()}


if __name__ == "__main__":
    counts = build(Path(sys.argv[1] if len(sys.argv) > 1 else "data/demo"))
    print(json.dumps(counts))
