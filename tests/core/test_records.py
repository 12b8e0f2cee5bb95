"""Record validation: every shape of every kind, every bad record named FILE:LINE and field."""

from __future__ import annotations

import pytest

from align.core.errors import DataError
from align.core.readers import read_rows
from align.core.records import load_records, parse_rows

ALPACA = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
DOLLY = {"instruction": "Summarise.", "context": "A long text.", "response": "Short.", "category": "summarization"}
MESSAGES = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}]}
PROMPT_COMPLETION = {"prompt": "2+2=", "completion": "4"}


def test_the_four_instruction_shapes(write_jsonl):
    records = load_records(write_jsonl("i.jsonl", [ALPACA, DOLLY, MESSAGES, PROMPT_COMPLETION]), "instructions")
    alpaca, dolly, messages, pc = records
    assert (alpaca.messages[-1]["content"], alpaca.context, alpaca.response) == ("Add the numbers.", "2 and 3", "5")
    assert (dolly.context, dolly.response) == ("A long text.", "Short.")
    assert [m["role"] for m in messages.messages] == ["system", "user"] and messages.response == "Hello."
    assert pc.messages == ({"role": "user", "content": "2+2="},) and pc.response == "4"
    assert alpaca.source.endswith("i.jsonl:1") and pc.source.endswith("i.jsonl:4")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"instruction": "Do it.", "input": ""}, 'field "output": missing'),
        ({"instruction": "Do it.", "input": "", "output": "  "}, 'field "output": empty'),
        ({"instruction": "Do it.", "output": 5}, 'field "output": expected a string, got int'),
        ({"messages": [{"role": "user", "content": "Hi"}]}, "the last message must be the assistant's"),
        ({"messages": [{"role": "bot", "content": "Hi"}]}, r'field "messages\[0\].role"'),
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}, "empty response"),
        ({"text": "free text"}, "no known shape.*found keys: text"),
    ],
)
def test_bad_instructions_name_line_and_field(write_jsonl, row, message):
    path = write_jsonl("bad.jsonl", [ALPACA, row])
    with pytest.raises(DataError, match=rf"bad.jsonl:2: .*{message}"):
        load_records(path, "instructions")


def test_every_problem_is_reported_not_just_the_first(write_jsonl):
    path = write_jsonl("bad.jsonl", [], raw=b'{"prompt": "a", "completion": "b"}\n{broken\n\xff\xfe\n[1, 2]\n{"prompt": ""}\n')
    with pytest.raises(DataError) as err:
        load_records(path, "instructions")
    text = str(err.value)
    assert "bad.jsonl:2: malformed JSON" in text
    assert "bad.jsonl:3: not UTF-8 (byte 0xff at column 1)" in text
    assert "bad.jsonl:4: expected a JSON object, got list" in text
    assert 'bad.jsonl:5: field "prompt": empty' in text
    assert "4 bad of 5 records" in text


def test_preferences_rankings_prompts(write_jsonl):
    prefs = load_records(write_jsonl("p.jsonl", [
        {"prompt": "Q", "chosen": "good", "rejected": "bad", "margin": 2},
        {"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "good"}],
         "rejected": [{"role": "assistant", "content": "bad"}]},
        {"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],
         "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}]},
    ]), "preferences")
    assert {(p.prompt[-1]["content"], p.chosen, p.rejected) for p in prefs} == {("Q", "good", "bad")}
    assert prefs[0].margin == 2.0
    ranking = load_records(write_jsonl("r.jsonl", [{"prompt": "Q", "completions": ["a", "b", "c"], "ranks": [1, 0, 1]}]),
                           "rankings")[0]
    assert ranking.ranks == (1, 0, 1)
    prompts = load_records(write_jsonl("q.jsonl", [{"prompt": "Q", "reference": "A"}, {"messages": MESSAGES["messages"]}]),
                           "prompts")
    assert prompts[0].reference == "A" and prompts[1].reference == "Hello."


@pytest.mark.parametrize(
    ("kind", "row", "message"),
    [
        ("preferences", {"prompt": "Q", "chosen": "same", "rejected": "same"}, "identical to chosen"),
        ("preferences", {"prompt": "Q", "chosen": "a"}, 'field "rejected": missing'),
        ("preferences", {"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": "\n\nHuman: hi\n\nAssistant: no"},
         "raw HH-RLHF transcript; convert the file first with `align data convert --from hh-rlhf"),
        ("rankings", {"prompt": "Q", "completions": ["only"], "ranks": [0]}, "at least 2 completions, got 1"),
        ("rankings", {"prompt": "Q", "completions": ["a", "b"], "ranks": [0]}, "has 1 entries for 2 completions"),
        ("rankings", {"prompt": "Q", "completions": ["a", "b"], "ranks": [0, -1]}, r'"ranks\[1\]"'),
        ("rankings", {"prompt": "Q", "completions": ["a", "b"], "ranks": [1, 1]}, "all completions tie"),
        ("rankings", {"prompt": "Q", "completions": ["a", "b", " a"], "ranks": [0, 1, 2]},
         r'field "completions\[2\]": identical to completions\[0\]: no preference to learn$'),
        ("prompts", {"reference": "x"}, "no known shape"),
        ("rankings", {"message_tree_id": "t1", "prompt": {"text": "hi"}}, "OpenAssistant export; convert the file first"),
    ],
)
def test_bad_preference_ranking_prompt_records(write_jsonl, kind, row, message):
    rows, _ = read_rows(write_jsonl("x.jsonl", [row]))
    _, problems = parse_rows(rows, kind)
    assert len(problems) == 1 and "x.jsonl:1:" in problems[0]
    assert __import__("re").search(message, problems[0])


@pytest.mark.parametrize(
    ("row", "chosen", "rejected"),
    [
        ({"prompt": "Q", "chosen": [{"role": "assistant", "content": ""}], "rejected": "bad"}, "", "bad"),
        ({"prompt": "Q", "chosen": "good", "rejected": [{"role": "assistant", "content": "  "}]}, "good", "  "),
        ({"prompt": "Q", "chosen": "", "rejected": "bad"}, "", "bad"),
        # TRL's implicit prompt: whole conversations sharing every turn but the last, here an empty one
        ({"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}],
          "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}]}, "", "bad"),
    ],
)
def test_an_empty_reply_is_a_real_preference(write_jsonl, row, chosen, rejected):
    """HH-RLHF's harmlessness pairs where saying nothing was preferred are kept, as the data means them."""
    rows, _ = read_rows(write_jsonl("x.jsonl", [row]))
    records, problems = parse_rows(rows, "preferences")
    assert problems == [] and (records[0].chosen, records[0].rejected) == (chosen, rejected)


def test_an_empty_reply_may_be_ranked_but_not_imitated(write_jsonl):
    rows, _ = read_rows(write_jsonl("x.jsonl", [
        {"prompt": "Q", "completions": ["", "harmful"], "ranks": [0, 1]},
        {"prompt": "Q", "completions": ["", " ", "x"], "ranks": [0, 1, 2]},
    ]))
    records, problems = parse_rows(rows, "rankings")
    assert [r.completions for r in records] == [("", "harmful")]
    assert problems == [f'{rows[1].source}: field "completions[1]": identical to completions[0]: no preference to learn']
    rows, _ = read_rows(write_jsonl("i.jsonl", [{"prompt": "Q", "completion": ""}]))
    assert parse_rows(rows, "instructions")[1] == [f'{rows[0].source}: field "completion": empty']
