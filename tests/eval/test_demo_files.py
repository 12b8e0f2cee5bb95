"""The demo's benchmark files: the multiple-choice CSV is what its generator writes, in MMLU's layout,
with the answers the demo tasks define."""

from __future__ import annotations

from align.demo import multiple_choice
from align.demo.tasks import expected_answer
from align.eval.benchmarks import read_documents, read_questions
from tests.conftest import DEMO


def test_shipped_multiple_choice_is_the_generators_output(tmp_path):
    assert multiple_choice.build(tmp_path) == 40
    assert (tmp_path / multiple_choice.FILE).read_bytes() == (DEMO / multiple_choice.FILE).read_bytes()


def test_multiple_choice_answers_are_right_and_unique():
    questions = read_questions(DEMO / multiple_choice.FILE)
    assert len(questions) == 40
    for q in questions:
        assert len(set(q.choices)) == 4, q
        assert q.choices[q.answer] == expected_answer(q.question)[1], q
    prompts = {line for name in ("sft.jsonl", "rankings.jsonl", "prompts.jsonl", "heldout.jsonl")
               for line in (DEMO / name).read_text().splitlines()}
    assert not any(q.question in line for q in questions for line in prompts)


def test_general_text_reads_as_documents():
    assert len(read_documents(DEMO / "general.txt")) == 20
