"""Templates turn records into TRL prompt/completion examples; mixing honours weights."""

from __future__ import annotations

from collections import Counter

from align.core.records import Instruction
from align.sft.formats import ALPACA_NO_INPUT, mix, to_example

ALPACA = Instruction(({"role": "user", "content": "Add the numbers."},), "5", "2 and 3", "f:1")
PLAIN = Instruction(({"role": "user", "content": "Say hi."},), "Hi!", "", "f:2")


def test_chat_template_keeps_messages_and_merges_context():
    example = to_example(ALPACA, "chat", system_prompt="Be brief.")
    assert example["prompt"] == [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Add the numbers.\n\n2 and 3"}]
    assert example["completion"] == [{"role": "assistant", "content": "5"}]


def test_alpaca_template_is_stanfords_text():
    with_input = to_example(ALPACA, "alpaca")["prompt"]
    assert "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n" in with_input
    assert to_example(PLAIN, "alpaca") == {"prompt": ALPACA_NO_INPUT.format(instruction="Say hi."), "completion": "Hi!"}


def test_flan_template_and_multi_turn_transcript():
    assert to_example(PLAIN, "flan")["prompt"] == "Say hi.\n\nAnswer:\n"
    turns = Instruction(({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                         {"role": "user", "content": "Bye?"}), "Bye.", "", "f:3")
    assert to_example(turns, "flan")["prompt"].startswith("User: Hi\nAssistant: Hello\nBye?")


def test_mix_takes_weight_times_each_source_deterministically():
    a = [Instruction(PLAIN.messages, f"a{i}", "", "a") for i in range(10)]
    b = [Instruction(PLAIN.messages, f"b{i}", "", "b") for i in range(10)]
    mixed = mix([(a, 2.0), (b, 0.5)], seed=1)
    counts = Counter(r.source for r in mixed)
    assert counts == {"a": 20, "b": 5}
    assert mixed == mix([(a, 2.0), (b, 0.5)], seed=1)
    assert mixed != mix([(a, 2.0), (b, 0.5)], seed=2)
