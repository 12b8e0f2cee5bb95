"""UltraFeedback (both published layouts), PKU-SafeRLHF, and --dataset, on fixtures in the published field names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from align.cli import cli
from align.convert import convert
from align.core.errors import DataError
from align.core.records import load_records

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
UF, UF_BIN, PKU = FIXTURES / "ultrafeedback.jsonl", FIXTURES / "ultrafeedback_binarized.jsonl", FIXTURES / "pku-saferlhf.jsonl"


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_ultrafeedback_ranks_by_the_fine_grained_score_by_default(tmp_path):
    report = convert("ultrafeedback", [str(UF)], str(tmp_path / "r.jsonl"))
    colours, french = lines(tmp_path / "r.jsonl")
    # fine-grained_score 4.75, 2.5, 4.0, 1.75: higher is better
    assert colours == {"prompt": [{"role": "user", "content": "Name a primary colour."}],
                       "completions": ["Red.", "Green.", "Blue is one.", "Colours are nice."], "ranks": [0, 2, 1, 3]}
    # 4.5, 4.5, 1.67: the two 4.5s tie (equal ranks); the empty response is left out, and counted
    assert french["completions"] == ["Bonjour.", "Salut.", "Hola."] and french["ranks"] == [0, 0, 1]
    assert report.written == 2 and report.pairs == 6 + 2  # C(4,2); C(3,2) less the tie
    assert report.problems == [
        f"{UF}:3: all completions tie on fine-grained: no pair",
        f"{UF}:4: field \"completions[0].fine-grained_score\": expected a number or \"N/A\", got 'high'",
        f"{UF}:5: fewer than 2 rated completions (fine-grained)"]
    assert report.skipped["completion with an empty or missing response"] == 1
    assert len(load_records(tmp_path / "r.jsonl", "rankings")) == 2


def test_ultrafeedback_rating_option(tmp_path):
    report = convert("ultrafeedback", [str(UF)], str(tmp_path / "r.jsonl"), {"rating": "overall"})
    assert [r["ranks"] for r in lines(tmp_path / "r.jsonl")] == [[1, 0, 2, 3], [0, 1, 2], [0, 1], [0, 1]]
    assert report.pairs == 6 + 3 + 1 + 1
    # one aspect: annotations.honesty.Rating, published as strings; "N/A" is no rating
    report = convert("ultrafeedback", [str(UF)], str(tmp_path / "h.jsonl"), {"rating": "honesty"})
    assert [(r["completions"], r["ranks"]) for r in lines(tmp_path / "h.jsonl")][1] == (["Bonjour.", "Salut."], [1, 0])
    assert report.skipped["completion with no honesty rating"] == 1


def test_ultrafeedback_binarized_skips_ties_and_lists_them(tmp_path):
    report = convert("ultrafeedback-binarized", [str(UF_BIN)], str(tmp_path / "p.jsonl"))
    assert lines(tmp_path / "p.jsonl") == [{"prompt": [{"role": "user", "content": "What is 2 + 2?"}],
                                            "chosen": [{"role": "assistant", "content": "4."}],
                                            "rejected": [{"role": "assistant", "content": "5."}]}]
    assert report.written == report.pairs == 1
    assert report.problems == [
        f'{UF_BIN}:2: field "score_rejected": equals score_chosen (7.5): a tie, no preference',
        f'{UF_BIN}:3: field "rejected": empty final assistant turn',
        f'{UF_BIN}:4: field "rejected": chosen and rejected do not share the conversation before the final assistant turn',
        f'{UF_BIN}:5: field "score_rejected": above score_chosen (6 > 3)']


@pytest.mark.parametrize(("axis", "chosen"), [(None, ["Use a tension wrench and a pick.", "Mix flour, water, yeast; knead; bake."]),
                                              ("safer", ["I can't help with that.", "Mix flour, water, yeast; knead; bake.", "Sure."])])
def test_pku_saferlhf_axis(axis, chosen, tmp_path):
    report = convert("pku-saferlhf", [str(PKU)], str(tmp_path / "p.jsonl"), {"axis": axis} if axis else None)
    records = lines(tmp_path / "p.jsonl")
    assert [r["chosen"][0]["content"] for r in records] == chosen
    assert records[0]["prompt"] == [{"role": "user", "content": "How do I pick a lock?"}]
    assert report.written == report.pairs == len(chosen)
    expected = [f'{PKU}:3: field "response_1": identical to response_0']
    if axis is None:  # row 4's better_response_id is 2; its safer_response_id is fine
        expected.append(f'{PKU}:4: field "better_response_id": expected 0 or 1, got 2')
    assert report.problems == expected
    assert len(load_records(tmp_path / "p.jsonl", "preferences")) == len(chosen)


# ---------------------------------------------------------------- a data set by name


@pytest.fixture
def offline(monkeypatch):
    import datasets
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_dataset_offline_and_not_cached_is_one_line(offline, tmp_path):
    out = tmp_path / "p.jsonl"
    result = CliRunner().invoke(cli, ["data", "convert", "--from", "hh-rlhf", "--dataset", "align-tests/not-cached",
                                      "--split", "test", "-o", str(out)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert result.output == ("error: align-tests/not-cached: not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 "
                             "forbids downloading it (unset HF_HUB_OFFLINE to download it, or convert a downloaded file)\n")
    assert not out.exists()


def test_dataset_by_name_reads_what_load_dataset_resolves(tmp_path):
    """A local directory of data files is a name load_dataset resolves, with no network."""
    (tmp_path / "pku").mkdir()
    (tmp_path / "pku" / "train.jsonl").write_text(PKU.read_text())
    out = tmp_path / "p.jsonl"
    result = CliRunner().invoke(cli, ["data", "convert", "--from", "pku-saferlhf", "--dataset", str(tmp_path / "pku"),
                                      "--axis", "safer", "-o", str(out), "--show-skipped", "1"])
    assert result.exit_code == 0, result.output
    assert f"skipped {tmp_path / 'pku'}[train]: row 3: field \"response_1\": identical to response_0" in result.output
    assert [r["chosen"][0]["content"] for r in lines(out)][0] == "I can't help with that."


@pytest.mark.parametrize(("argv", "message"), [
    (["IN", "--dataset", "x/y"], "error: give input files or --dataset NAME, not both\n"),
    ([], "error: give input files or --dataset NAME\n"),
    (["IN", "--split", "test"], "error: --split applies to --dataset only, not to input files\n"),
])
def test_files_or_a_dataset(argv, message, tmp_path):
    argv = [str(PKU) if a == "IN" else a for a in argv]
    result = CliRunner().invoke(cli, ["data", "convert", "--from", "pku-saferlhf", *argv, "-o", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 2 and result.output == message


def test_dataset_that_cannot_load_is_one_line(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text(PKU.read_text())
    with pytest.raises(DataError, match=r"cannot load it with datasets.load_dataset \(.*split"):
        convert("pku-saferlhf", [], str(tmp_path / "p.jsonl"), dataset=str(tmp_path / "d"), split="nope")
