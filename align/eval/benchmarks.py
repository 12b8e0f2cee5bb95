"""Inputs beside the held-out prompts: general text for perplexity (what tuning forgot), and a multiple-choice
file in MMLU's layout (Hendrycks et al. 2021), read and checked here and run through lm-eval (harness.py)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from align.core.errors import DataError
from align.core.readers import read_rows
from align.eval import likelihood
from align.eval.models import View

LETTERS = ("A", "B", "C", "D")
CSV_HEADER = ["question", "a", "b", "c", "d", "answer"]
# Hendrycks et al.'s zero-shot prompt (their `format_example`) with the subject left out, as harness.py asks it
MC_HEADER = "The following are multiple choice questions (with answers).\n\n"


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, str, str, str]
    answer: int  # index into choices
    source: str


# ---------------------------------------------------------------- general text


def read_documents(path: str | Path) -> list[str]:
    """Documents of a .txt file (split at blank lines) or of JSON Lines / JSON records with "text"."""
    path = Path(path)
    if not path.is_file():
        raise DataError([f"{path}: no such file (perplexity_text)"])
    if path.suffix.lower() in (".txt", ".md"):
        text = path.read_text(encoding="utf-8", errors="strict")
        docs = [d.strip() for d in text.replace("\r\n", "\n").split("\n\n")]
    else:
        rows, problems = read_rows(path)
        docs = []
        for row in rows:
            value = row.data.get("text")
            if not isinstance(value, str):
                problems.append(f'{row.source}: field "text": missing or not a string')
            docs.append(value if isinstance(value, str) else "")
        if problems:
            raise DataError(problems, total=len(rows))
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError([f"{path}: no text to measure perplexity on"])
    return docs


def perplexity(view: View, documents: list[str], max_length: int, batch_size: int = 8) -> float:
    return likelihood.perplexity(view, documents, max_length, batch_size)


# ---------------------------------------------------------------- multiple choice


def read_questions(path: str | Path) -> list[Question]:
    """MMLU's CSVs (question,A,B,C,D,answer with no header; a header row is skipped) or records
    {"question", "choices": [four strings], "answer": 0-3 or "A"-"D"} (the cais/mmlu layout)."""
    path = Path(path)
    if not path.is_file():
        raise DataError([f"{path}: no such file (mmlu)"])
    if path.suffix.lower() == ".csv":
        questions, problems = _read_csv(path)
    else:
        questions, problems = [], []
        rows, problems = read_rows(path)
        for row in rows:
            try:
                questions.append(_question(row.data.get("question"), row.data.get("choices"), row.data.get("answer"),
                                           row.source))
            except ValueError as e:
                problems.append(f"{row.source}: {e}")
    if problems:
        raise DataError(problems, total=len(questions) + len(problems))
    if not questions:
        raise DataError([f"{path}: no questions"])
    return questions


def _read_csv(path: Path) -> tuple[list[Question], list[str]]:
    questions, problems = [], []
    reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline=""))
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if reader.line_num == 1 and [c.strip().lower() for c in row] == CSV_HEADER:
            continue
        if not any(c.strip() for c in row):
            continue
        if len(row) != 6:
            problems.append(f"{where}: expected 6 columns (question,A,B,C,D,answer), got {len(row)}")
            continue
        try:
            questions.append(_question(row[0], row[1:5], row[5], where))
        except ValueError as e:
            problems.append(f"{where}: {e}")
    return questions, problems


def _question(question: object, choices: object, answer: object, source: str) -> Question:
    if not isinstance(question, str) or not question.strip():
        raise ValueError('field "question": missing or empty')
    if not isinstance(choices, (list, tuple)) or len(choices) != 4 or not all(isinstance(c, str) for c in choices):
        raise ValueError('field "choices": expected four strings')
    if isinstance(answer, str) and answer.strip().upper() in LETTERS:
        index = LETTERS.index(answer.strip().upper())
    elif isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < 4:
        index = answer
    elif isinstance(answer, str) and answer.strip() in ("0", "1", "2", "3"):
        index = int(answer)
    else:
        raise ValueError(f'field "answer": expected A-D or 0-3, got {answer!r}')
    return Question(question.strip(), tuple(c.strip() for c in choices), index, source)  # type: ignore[arg-type]
