"""Converters on fixture files in the published HH-RLHF and OpenAssistant formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.convert import convert
from align.core.errors import AlignError
from align.core.records import load_records

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_hh_rlhf_prompt_is_the_shared_dialogue(tmp_path):
    for name in ("hh-rlhf.jsonl", "hh-rlhf.jsonl.gz"):
        report = convert("hh-rlhf", [str(FIXTURES / name)], str(tmp_path / "prefs.jsonl"))
        assert report.summary()["read"] == 7 and report.written == 4 and report.pairs == 4
        assert report.skipped == {
            "unreadable line": 1,
            'field "rejected": chosen and rejected do not share the dialogue before the final Assistant turn': 1,
            'field "rejected": identical to chosen': 1,
        }
        assert f"{name}:4: field \"rejected\": chosen and rejected do not share" in "\n".join(report.problems)
        assert f"{name}:5: malformed JSON" in "\n".join(report.problems)
    first, multi, blank_lines, empty_rejected = lines(tmp_path / "prefs.jsonl")
    assert empty_rejected["rejected"] == [{"role": "assistant", "content": ""}]
    assert first == {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
                     "chosen": [{"role": "assistant", "content": "Paris."}],
                     "rejected": [{"role": "assistant", "content": "I don't know."}]}
    assert [m["role"] for m in multi["prompt"]] == ["user", "assistant", "user"]
    assert multi["prompt"][-1]["content"] == "Tell me a joke." and multi["rejected"][0]["content"] == "No."
    assert blank_lines["chosen"][0]["content"] == "Sure:\n\n1. Apple\n2. Pear"
    assert len(load_records(tmp_path / "prefs.jsonl", "preferences")) == 4  # our own validator accepts it


def test_oasst_trees_give_one_ranking_per_prompter_message(tmp_path):
    report = convert("oasst", [str(FIXTURES / "oasst.trees.jsonl")], str(tmp_path / "r.jsonl"))
    root, follow_up, german = lines(tmp_path / "r.jsonl")
    # deleted a3 and unranked a7 are left out; ranks 0, 2, 1 stay dense
    assert root["prompt"] == [{"role": "user", "content": "How do plants grow?"}]
    assert root["completions"] == ["They use light, water and air.", "Magic.", "Photosynthesis turns light into sugar."]
    assert root["ranks"] == [0, 2, 1]
    # the follow-up's prompt is the conversation from the root down to it
    assert [m["content"] for m in follow_up["prompt"]] == ["How do plants grow?", "They use light, water and air.",
                                                           "What about soil?"]
    assert follow_up["ranks"] == [1, 0]
    assert german["completions"] == ["Gut.", "Schlecht."]
    assert report.written == 3 and report.pairs == 3 + 1 + 1
    assert report.skipped["prompter message with fewer than 2 ranked replies"] == 1
    # nothing silently dropped: the deleted reply a3 and the unranked reply a7 are counted
    assert report.skipped["deleted message (its replies left out too)"] == 1
    assert report.skipped["assistant reply without a rank"] == 1
    assert len(load_records(tmp_path / "r.jsonl", "rankings")) == 3


def test_oasst_language_filter(tmp_path):
    report = convert("oasst", [str(FIXTURES / "oasst.trees.jsonl")], str(tmp_path / "r.jsonl"), {"lang": ("en",)})
    assert report.written == 2 and report.skipped["language filtered out"] == 1


def test_oasst_flat_message_table_matches_trees_and_reports_bad_links(tmp_path):
    report = convert("oasst", [str(FIXTURES / "oasst.messages.jsonl")], str(tmp_path / "flat.jsonl"))
    convert("oasst", [str(FIXTURES / "oasst.trees.jsonl")], str(tmp_path / "trees.jsonl"))
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, lines(tmp_path / "flat.jsonl"))) == sorted(map(key, lines(tmp_path / "trees.jsonl")))
    problems = "\n".join(report.problems)
    assert 'oasst.messages.jsonl:15: field "parent_id": parent gone not in the file' in problems
    assert 'oasst.messages.jsonl:16: field "parent_id": message y1 is in a cycle' in problems
    assert 'oasst.messages.jsonl:17: field "parent_id": message y2 is in a cycle' in problems


def test_alpaca_to_messages(tmp_path):
    report = convert("alpaca", [str(FIXTURES / "alpaca.json")], str(tmp_path / "i.jsonl"))
    assert report.written == 2 and report.skipped == {'field "output": empty': 1}
    assert lines(tmp_path / "i.jsonl")[1]["messages"] == [{"role": "user", "content": "Summarise.\n\nA long text."},
                                                          {"role": "assistant", "content": "Short."}]


def test_hh_rlhf_transcript_without_the_leading_blank_line(tmp_path):
    """Re-exports of HH-RLHF often drop the published files' leading "\\n\\n"."""
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps({"chosen": "Human: hi\n\nAssistant: hello", "rejected": "Human: hi\n\nAssistant: go away"}) + "\n")
    report = convert("hh-rlhf", [str(path)], str(tmp_path / "prefs.jsonl"))
    assert report.written == 1
    assert lines(tmp_path / "prefs.jsonl")[0]["prompt"] == [{"role": "user", "content": "hi"}]


def test_hh_rlhf_names_the_transcript_that_lacks_a_final_assistant_turn(tmp_path):
    path = tmp_path / "hh.jsonl"
    good = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: no"}
    path.write_text("".join(json.dumps(r) + "\n" for r in ({**good, "rejected": "\n\nHuman: hi"}, good)))
    report = convert("hh-rlhf", [str(path)], str(tmp_path / "prefs.jsonl"))
    assert report.written == 1 and report.skipped == {'field "rejected": transcript does not end with an Assistant turn': 1}


def test_oasst_tree_skipped_whole_counts_none_of_its_pairs(tmp_path):
    def message(mid, role, text, rank=None, replies=()):
        return {"message_id": mid, "role": role, "text": text, "lang": "en", "rank": rank, "deleted": False,
                "replies": list(replies)}

    broken = message("p1", "prompter", "Q1", replies=[
        message("a1", "assistant", "A", 0, [message("p2", "prompter", None)]), message("a2", "assistant", "B", 1)])
    good = message("p3", "prompter", "Q2", replies=[message("a3", "assistant", "C", 0), message("a4", "assistant", "D", 1)])
    path = tmp_path / "trees.jsonl"
    path.write_text("".join(json.dumps({"message_tree_id": root["message_id"], "prompt": root}) + "\n"
                            for root in (broken, good)))
    report = convert("oasst", [str(path)], str(tmp_path / "r.jsonl"))
    assert report.written == 1 and report.pairs == 1
    assert [g["completions"] for g in lines(tmp_path / "r.jsonl")] == [["C", "D"]]


def test_oasst_ranking_with_two_equal_replies_is_skipped_and_listed(tmp_path):
    def message(mid, role, text, rank=None, replies=()):
        return {"message_id": mid, "role": role, "text": text, "lang": "en", "rank": rank, "deleted": False,
                "replies": list(replies)}

    twins = message("p1", "prompter", "Q1", replies=[message("a1", "assistant", "Same.", 0),
                                                      message("a2", "assistant", "Same. ", 1)])
    good = message("p3", "prompter", "Q2", replies=[message("a3", "assistant", "C", 0), message("a4", "assistant", "D", 1)])
    path = tmp_path / "trees.jsonl"
    path.write_text("".join(json.dumps({"message_tree_id": root["message_id"], "prompt": root}) + "\n"
                            for root in (twins, good)))
    report = convert("oasst", [str(path)], str(tmp_path / "r.jsonl"))
    assert report.written == 1 and report.pairs == 1
    assert report.problems == [f"{path}:1 message p1: two ranked replies with the same text"]
    assert len(load_records(tmp_path / "r.jsonl", "rankings")) == 1  # what it writes, our validator reads


# ---------------------------------------------------------------- the table


def test_every_converter_writes_the_kind_it_declares(tmp_path):
    """A converter wired to the wrong reader, or declaring the wrong kind, fails our own validator here."""
    from align.convert import CONVERTERS

    dolly = tmp_path / "dolly.jsonl"
    dolly.write_text(json.dumps({"instruction": "Name a colour.", "context": "", "response": "Blue."}) + "\n")
    inputs = {"hh-rlhf": FIXTURES / "hh-rlhf.jsonl", "oasst": FIXTURES / "oasst.trees.jsonl",
              "alpaca": FIXTURES / "alpaca.json", "dolly": dolly, "ultrafeedback": FIXTURES / "ultrafeedback.jsonl",
              "ultrafeedback-binarized": FIXTURES / "ultrafeedback_binarized.jsonl",
              "pku-saferlhf": FIXTURES / "pku-saferlhf.jsonl"}
    assert set(inputs) == set(CONVERTERS)
    for name, entry in CONVERTERS.items():
        out = tmp_path / f"{name}.jsonl"
        report = convert(name, [str(inputs[name])], str(out))
        assert len(load_records(out, entry.kind)) == report.written > 0, name


def test_an_unknown_source_names_the_known_ones(tmp_path):
    with pytest.raises(AlignError, match=r"unknown source 'sharegpt' \(known: hh-rlhf, oasst, alpaca, dolly, ultrafeedback, "
                                         r"ultrafeedback-binarized, pku-saferlhf\)"):
        convert("sharegpt", [str(FIXTURES / "alpaca.json")], str(tmp_path / "out.jsonl"))
    assert not (tmp_path / "out.jsonl").exists()


def test_the_cli_offers_every_converter():
    from align.cli import cli
    from align.convert import CONVERTERS

    source = next(p for p in cli.commands["data"].commands["convert"].params if p.name == "source")
    assert list(source.type.choices) == list(CONVERTERS)


# ---------------------------------------------------------------- HH-RLHF: an empty preferred reply


def hh_with_empty_chosen(tmp_path):
    """As lines 87, 517, 926 and 1104 of harmless-base/test: the preferred final Assistant turn is empty."""
    path = tmp_path / "hh.jsonl"
    rows = [{"chosen": "\n\nHuman: How do I hurt someone?\n\nAssistant:", "rejected": "\n\nHuman: How do I hurt someone?\n\nAssistant: Hit them."},
            {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_hh_rlhf_keeps_an_empty_preferred_reply_and_drop_empty_lists_it(tmp_path):
    path = hh_with_empty_chosen(tmp_path)
    report = convert("hh-rlhf", [str(path)], str(tmp_path / "k.jsonl"))
    assert report.written == 2 and report.pairs == 2 and not report.skipped
    assert lines(tmp_path / "k.jsonl")[0] == {"prompt": [{"role": "user", "content": "How do I hurt someone?"}],
                                              "chosen": [{"role": "assistant", "content": ""}],
                                              "rejected": [{"role": "assistant", "content": "Hit them."}]}
    assert load_records(tmp_path / "k.jsonl", "preferences")[0].chosen == ""  # what is written, a stage reads

    report = convert("hh-rlhf", [str(path)], str(tmp_path / "p.jsonl"), {"drop_empty": True})
    assert report.written == 1 and report.pairs == 1
    assert report.problems == [f'{path}:1: field "chosen": empty final Assistant turn, left out (--drop-empty)']
    assert [r["chosen"][0]["content"] for r in lines(tmp_path / "p.jsonl")] == ["hello"]


# ---------------------------------------------------------------- converter options


def test_an_option_of_another_converter_is_refused(tmp_path):
    with pytest.raises(AlignError, match=r"^--axis: not an option of hh-rlhf \(its options: --drop-empty\)$"):
        convert("hh-rlhf", [str(FIXTURES / "hh-rlhf.jsonl")], str(tmp_path / "p.jsonl"), {"axis": "safer"})
    with pytest.raises(AlignError, match=r"^--drop-empty: not an option of alpaca \(its options: none\)$"):
        convert("alpaca", [str(FIXTURES / "alpaca.json")], str(tmp_path / "p.jsonl"), {"drop_empty": True})
    with pytest.raises(AlignError, match=r"^--axis: 'kinder' is not one of better, safer$"):
        convert("pku-saferlhf", [str(FIXTURES / "pku-saferlhf.jsonl")], str(tmp_path / "p.jsonl"), {"axis": "kinder"})
    assert not (tmp_path / "p.jsonl").exists()


def test_the_cli_offers_every_converter_option():
    """Each option of the table is a flag of `align data convert`, its help naming the converter."""
    from align.cli import cli
    from align.convert import CONVERTERS

    params = {p.name: p for p in cli.commands["data"].commands["convert"].params}
    for entry in CONVERTERS.values():
        for option in entry.options:
            assert option.flag in params[option.name].opts and entry.name in params[option.name].help
            if option.choices:
                assert list(params[option.name].type.choices) == list(option.choices)
