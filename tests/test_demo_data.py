"""The shipped demo data is what the generator makes, and the judge checks answers."""

from __future__ import annotations

import pytest

from align.demo.build import build
from align.demo.tasks import expected_answer, judge
from tests.conftest import DEMO


def test_shipped_files_are_the_generators_output(tmp_path):
    counts = build(tmp_path)
    assert counts == {"sft": 400, "rankings": 300, "prompts": 200, "heldout": 60}
    for name in counts:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (DEMO / f"{name}.jsonl").read_bytes(), name


@pytest.mark.parametrize(
    ("prompt", "response", "score"),
    [
        ("What is 12 + 30?", "12 + 30 = 42.", 1.0),
        ("What is 12 + 30?", "12 + 30 = 32\n\nThis is a classic example of arithmetic.", 0.0),
        ("What is 12 + 30?", "The answer is 42, as adding twelve and thirty gives exactly forty-two in total.", 0.5),
        ("Which number is larger, 37 or 73?", "73 is larger.", 1.0),
        ("Which number is larger, 37 or 73?", "37 is larger than 73.", 0.0),
        ('Reverse the letters of the word "planet".', "tenalp", 1.0),
        ('Write the word "garden" in capital letters.', "Garden", 0.0),
        ('How many letters are in the word "window"?', '"window" has 6 letters.', 1.0),
        ("Sort these numbers from smallest to largest: 5, 2, 9.", "2, 5, 9", 1.0),
        ("Sort these numbers from smallest to largest: 5, 2, 9.", "2, 9, 5", 0.0),
        ("What is 7 times 8?", "7 x 8 = 56.", 1.0),
        ("What is 9 - 4?", "", 0.0),
    ],
)
def test_judge(prompt, response, score):
    assert judge(prompt, response) == score


def test_judge_refuses_other_prompts():
    assert expected_answer("Tell me a joke.") is None
    with pytest.raises(ValueError, match="not a demo prompt"):
        judge("Tell me a joke.", "no")
