"""Write the demo multiple-choice benchmark in MMLU's CSV layout (question,A,B,C,D,answer; no header),
so the evaluation's multiple-choice accuracy runs on the demo without downloading MMLU.

    python -m align.demo.multiple_choice [OUT_DIR]

The questions are demo tasks not used in any other demo file: the same generator and seed as
align.demo.build, continued past the tasks it takes. Each question has its right answer and three
wrong ones of the same kind (nearby numbers, misspelt or miscased words, misordered lists).
"""

from __future__ import annotations

import csv
import io
import random
import sys
from pathlib import Path

from align.demo.build import SEED, SIZES, unique_tasks
from align.demo.tasks import Task

FILE = "multiple_choice.csv"
SIZE = 40
LETTERS = "ABCD"


def wrong_answers(task: Task, rng: random.Random) -> list[str]:
    """Three distinct wrong answers of the same kind as the right one."""
    right = task.answer
    if right.lstrip("-").isdigit():
        offsets = rng.sample([-10, -3, -2, -1, 1, 2, 3, 10], 3)
        return [str(int(right) + k) for k in offsets]
    if task.family == "sort":
        numbers = right.split(", ")
        seen, out = {right}, []
        while len(out) < 3:
            shuffled = ", ".join(rng.sample(numbers, len(numbers)))
            if shuffled not in seen:
                seen.add(shuffled)
                out.append(shuffled)
        return out
    word = right.lower() if task.family == "upper" else right[::-1]  # the word as the prompt gives it
    candidates = [word, word.capitalize(), word.upper(), right[::-1], right[:-2] + right[-1] + right[-2],
                  right.capitalize(), right.lower()]
    out = []
    for c in candidates:
        if c != right and c not in out:
            out.append(c)
    return rng.sample(out, 3)


def questions(n: int = SIZE) -> list[list[str]]:
    """Rows question,A,B,C,D,answer with the right answer at a random letter."""
    used = sum(SIZES.values())
    tasks = unique_tasks(used + n, random.Random(SEED))[used:]
    rng = random.Random(SEED + 1)
    rows = []
    for task in tasks:
        choices = [task.answer] + wrong_answers(task, rng)
        rng.shuffle(choices)
        rows.append([task.prompt, *choices, LETTERS[choices.index(task.answer)]])
    return rows


def build(out_dir: Path) -> int:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(questions())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FILE).write_text(buffer.getvalue(), encoding="utf-8")
    return SIZE


if __name__ == "__main__":
    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "data/demo")))
