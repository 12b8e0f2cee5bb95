"""The demo's tasks: short instructions whose answers a program can check.

Eight families (arithmetic, word games, sorting, comparison). Each prompt carries everything
needed to compute its answer, so `judge(prompt, response)` is a gold score a person can read:

    1.0  the answer is right and the response is concise (at most CONCISE_WORDS words)
    0.5  the answer is right but buried in a verbose response
    0.0  the answer is wrong or missing

The demo rankings follow the same rule: a right answer beats a wrong one; between two responses
equally right (or equally wrong), the shorter one wins.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

CONCISE_WORDS = 12

WORDS = (
    "apple banana river mountain garden window planet silver orange pencil rocket summer winter "
    "forest bridge candle dragon castle violin butter pepper island jacket kitten ladder marble "
    "needle oyster parrot puzzle rabbit saddle tomato velvet walnut yellow zipper anchor basket "
    "cactus doctor engine falcon guitar hammer igloo jungle kettle lemon magnet napkin orchid "
    "pirate quartz ribbon spider tunnel unicorn valley wagon anthem breeze copper dinner"
).split()

FILLERS = (
    "I hope this helps! Let me know if you have any other questions about this or anything else.",
    "Let me think about this carefully and explain every step of my reasoning before I answer.",
    "This is a great question, and it is the kind of thing that people often find a little tricky.",
    "To be completely sure, I double-checked the result in my head, and I am quite confident in it.",
)


@dataclass(frozen=True)
class Task:
    family: str
    prompt: str
    answer: str  # the canonical short answer
    response: str  # a concise correct response
    wrong: str  # a concise wrong response


def make_task(rng: random.Random) -> Task:
    family = rng.choice(sorted(FAMILIES))
    return FAMILIES[family](rng)


def _add(rng):
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    w = a + b + rng.choice([-10, -2, -1, 1, 2, 10])
    return Task("add", f"What is {a} + {b}?", str(a + b), f"{a} + {b} = {a + b}.", f"{a} + {b} = {w}.")


def _sub(rng):
    a, b = sorted((rng.randint(2, 99), rng.randint(2, 99)), reverse=True)
    w = a - b + rng.choice([-10, -1, 1, 2, 10])
    return Task("sub", f"What is {a} - {b}?", str(a - b), f"{a} - {b} = {a - b}.", f"{a} - {b} = {w}.")


def _mul(rng):
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    w = a * b + rng.choice([-a, a, -1, 1])
    return Task("mul", f"What is {a} times {b}?", str(a * b), f"{a} x {b} = {a * b}.", f"{a} x {b} = {w}.")


def _larger(rng):
    a, b = rng.sample(range(2, 100), 2)
    big, small = max(a, b), min(a, b)
    return Task("larger", f"Which number is larger, {a} or {b}?", str(big), f"{big} is larger.", f"{small} is larger.")


def _count(rng):
    word = rng.choice(WORDS)
    n = len(word)
    wrong = n + rng.choice([-2, -1, 1, 2])
    return Task(
        "count", f'How many letters are in the word "{word}"?', str(n),
        f'"{word}" has {n} letters.', f'"{word}" has {wrong} letters.',
    )


def _reverse(rng):
    word = rng.choice(WORDS)
    wrong = word[:-2] + word[-1] + word[-2]
    return Task("reverse", f'Reverse the letters of the word "{word}".', word[::-1], word[::-1], wrong[::-1])


def _upper(rng):
    word = rng.choice(WORDS)
    return Task("upper", f'Write the word "{word}" in capital letters.', word.upper(), word.upper(), word.capitalize())


def _sort(rng):
    nums = rng.sample(range(1, 60), rng.randint(3, 5))
    good = sorted(nums)
    bad = good[:]
    i = rng.randrange(len(bad) - 1)
    bad[i], bad[i + 1] = bad[i + 1], bad[i]
    show = lambda xs: ", ".join(map(str, xs))  # noqa: E731
    return Task("sort", f"Sort these numbers from smallest to largest: {show(nums)}.", show(good), show(good), show(bad))


FAMILIES = {
    "add": _add, "sub": _sub, "mul": _mul, "larger": _larger,
    "count": _count, "reverse": _reverse, "upper": _upper, "sort": _sort,
}

# ---------------------------------------------------------------- checking a response

_NUMBER = re.compile(r"-?\d+")
_PATTERNS = [
    ("add", re.compile(r"^What is (\d+) \+ (\d+)\?$"), lambda a, b: str(int(a) + int(b))),
    ("sub", re.compile(r"^What is (\d+) - (\d+)\?$"), lambda a, b: str(int(a) - int(b))),
    ("mul", re.compile(r"^What is (\d+) times (\d+)\?$"), lambda a, b: str(int(a) * int(b))),
    ("larger", re.compile(r"^Which number is larger, (\d+) or (\d+)\?$"), lambda a, b: str(max(int(a), int(b)))),
    ("count", re.compile(r'^How many letters are in the word "(\w+)"\?$'), lambda w: str(len(w))),
    ("reverse", re.compile(r'^Reverse the letters of the word "(\w+)"\.$'), lambda w: w[::-1]),
    ("upper", re.compile(r'^Write the word "(\w+)" in capital letters\.$'), lambda w: w.upper()),
    ("sort", re.compile(r"^Sort these numbers from smallest to largest: ([\d, ]+)\.$"),
     lambda s: ", ".join(map(str, sorted(int(x) for x in s.split(","))))),
]


def expected_answer(prompt: str) -> tuple[str, str] | None:
    """(family, answer) for a demo prompt; None for any other text."""
    prompt = prompt.strip()
    for family, pattern, solve in _PATTERNS:
        match = pattern.match(prompt)
        if match:
            return family, solve(*match.groups())
    return None


def is_correct(family: str, answer: str, response: str) -> bool:
    if family == "sort":
        want = answer.split(", ")
        got = _NUMBER.findall(response)
        return got[-len(want):] == want
    if answer.lstrip("-").isdigit():
        # the answer is the first number after the last "=" (arithmetic), else the first number
        tail = response.rsplit("=", 1)[-1]
        numbers = _NUMBER.findall(tail)
        return bool(numbers) and numbers[0] == answer
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", response) is not None


def judge(prompt: str, response: str) -> float:
    """Gold score of a response to a demo prompt: 1.0 right and concise, 0.5 right but verbose, 0.0 wrong."""
    solved = expected_answer(prompt)
    if solved is None:
        raise ValueError(f"not a demo prompt: {prompt[:60]!r}")
    family, answer = solved
    if not is_correct(family, answer, response):
        return 0.0
    return 1.0 if len(response.split()) <= CONCISE_WORDS else 0.5


def ranked_variants(task: Task, rng: random.Random) -> list[tuple[str, int]]:
    """Four responses with their ranks under the demo rule (0 best)."""
    filler = rng.choice(FILLERS)
    return [
        (task.response, 0),  # right, concise
        (padded(task.response, filler), 1),  # right, verbose
        (task.wrong, 2),  # wrong, concise
        (padded(task.wrong, filler), 3),  # wrong, verbose
    ]


def padded(text: str, filler: str) -> str:
    """A response made verbose by a filler sentence."""
    return f"{text}{'' if text.endswith('.') else '.'} {filler}"
