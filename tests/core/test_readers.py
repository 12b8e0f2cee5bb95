"""Readers: every file type, gzip, the byte-order mark, the limit per record, every line named FILE:LINE."""

from __future__ import annotations

import gzip
import json

import pytest

from align.core.errors import DataError
from align.core.readers import read_rows
from align.core.records import load_records

ALPACA = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
DOLLY = {"instruction": "Summarise.", "context": "A long text.", "response": "Short.", "category": "summarization"}
PROMPT_COMPLETION = {"prompt": "2+2=", "completion": "4"}


def test_missing_file_directory_empty_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_rows(tmp_path / "none.jsonl")
    with pytest.raises(DataError, match="is a directory"):
        read_rows(tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no records"):
        load_records(tmp_path / "empty.jsonl", "instructions")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unknown file type"):
        read_rows(tmp_path / "x.txt")


def test_gzip_and_truncated_gzip(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(json.dumps(ALPACA).encode() + b"\n" for _ in range(200))))
    assert len(load_records(path, "instructions")) == 200
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError, match=r"cut.jsonl.gz:\d+: truncated or corrupt gzip"):
        read_rows(cut)


def test_json_array_jsonl_under_json_name_csv_parquet_and_dataset_dir(tmp_path):
    (tmp_path / "alpaca.json").write_text(json.dumps([ALPACA, ALPACA]))  # Alpaca ships a JSON array
    (tmp_path / "lines.json").write_text(json.dumps(DOLLY) + "\n" + json.dumps(DOLLY) + "\n")
    (tmp_path / "t.csv").write_text('instruction,input,output\n"Add.","1, 2","3"\n')
    import datasets

    datasets.Dataset.from_list([ALPACA] * 3).to_parquet(str(tmp_path / "t.parquet"))
    datasets.Dataset.from_list([DOLLY] * 4).save_to_disk(str(tmp_path / "ds"))
    counts = {name: len(load_records(tmp_path / name, "instructions"))
              for name in ("alpaca.json", "lines.json", "t.csv", "t.parquet", "ds")}
    assert counts == {"alpaca.json": 2, "lines.json": 2, "t.csv": 1, "t.parquet": 3, "ds": 4}
    assert load_records(tmp_path / "t.csv", "instructions")[0].source.endswith("t.csv:2")


def test_a_record_over_the_size_limit_is_a_problem_and_the_rest_are_read(write_jsonl):
    # 8.5 MB of prompt on line 2: refused by its byte length, before json.loads sees it
    big = '{"prompt": "%s"}' % ("x" * (8_500_000 - len('{"prompt": ""}\n')))
    path = write_jsonl("big.jsonl", [PROMPT_COMPLETION, big, {"prompt": ""}, PROMPT_COMPLETION])
    rows, problems = read_rows(path)
    assert problems == [f"{path}:2: record is 8.5 MB, over the 8 MB limit per record (ALIGN_MAX_RECORD_MB)"]
    assert [row.source for row in rows] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    with pytest.raises(DataError) as err:
        load_records(path, "instructions")
    assert str(err.value).splitlines()[-1] == "2 bad of 4 records"


def test_the_size_limit_holds_for_every_format_and_comes_from_the_environment(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("ALIGN_MAX_RECORD_MB", "0.1")
    big = {"prompt": "x" * 300_000, "completion": "y"}
    (tmp_path / "a.json").write_text(json.dumps([PROMPT_COMPLETION, big, PROMPT_COMPLETION]))
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(f"{json.dumps(PROMPT_COMPLETION)}\n{json.dumps(big)}\n".encode()))
    (tmp_path / "a.csv").write_text(f"prompt,completion\nq,a\n{big['prompt']},y\n")
    datasets.Dataset.from_list([PROMPT_COMPLETION, big]).to_parquet(str(tmp_path / "a.parquet"))
    datasets.Dataset.from_list([PROMPT_COMPLETION, big]).save_to_disk(str(tmp_path / "ds"))
    limit = "record is 0.3 MB, over the 0.1 MB limit per record (ALIGN_MAX_RECORD_MB)"
    expected = {
        "a.json": (2, f"{tmp_path / 'a.json'}: item 1: {limit}"),
        "a.jsonl.gz": (1, f"{tmp_path / 'a.jsonl.gz'}:2: {limit}"),
        "a.csv": (1, f"{tmp_path / 'a.csv'}:3: {limit}"),
        "a.parquet": (1, f"{tmp_path / 'a.parquet'}: row 2: {limit}"),
        "ds": (1, f"{tmp_path / 'ds'}: row 2: {limit}"),
    }
    for name, (n_rows, problem) in expected.items():
        rows, problems = read_rows(tmp_path / name)
        assert (len(rows), problems) == (n_rows, [problem]), name
    monkeypatch.setenv("ALIGN_MAX_RECORD_MB", "lots")
    with pytest.raises(DataError) as err:
        read_rows(tmp_path / "a.json")
    assert str(err.value) == "ALIGN_MAX_RECORD_MB='lots': expected a number of megabytes > 0"


def test_a_byte_order_mark_is_dropped_in_every_format(tmp_path):
    bom, line = b"\xef\xbb\xbf", json.dumps(ALPACA).encode()
    files = {
        "a.jsonl": bom + line + b"\n" + line + b"\n",
        "a.jsonl.gz": gzip.compress(bom + line + b"\n" + line + b"\n"),
        "a.json": bom + b"[" + line + b", " + line + b"]",  # a JSON array
        "b.json": bom + line + b"\n" + line + b"\n",  # JSON Lines under a .json name
        "a.json.gz": gzip.compress(bom + b"[" + line + b", " + line + b"]"),
        "a.csv": bom + b'instruction,input,output\n"Add.","1, 2","3"\n"Add.","2, 3","5"\n',
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    counts = {name: len(load_records(tmp_path / name, "instructions")) for name in files}
    assert counts == dict.fromkeys(files, 2)
    # a bad byte after the mark is named where it is, not three bytes off
    (tmp_path / "bad.csv").write_bytes(bom + b"instruction,output\n\xff,x\n")
    with pytest.raises(DataError) as err:
        read_rows(tmp_path / "bad.csv")
    assert str(err.value) == f"{tmp_path / 'bad.csv'}:2: not UTF-8 (byte 0xff)"


def test_a_blank_line_does_not_shift_the_line_named_after_it(write_jsonl):
    path = write_jsonl("blank.jsonl", [], raw=b'{"prompt": "a", "completion": "b"}\n\n{"prompt": ""}\n  \n{"prompt": "c", "completion": "d"}\n')
    rows, problems = read_rows(path)
    assert problems == [] and [r.source for r in rows] == [f"{path}:1", f"{path}:3", f"{path}:5"]
    with pytest.raises(DataError) as err:
        load_records(path, "instructions")
    assert f'{path}:3: field "prompt": empty' in str(err.value)
    assert ":2:" not in str(err.value) and "1 bad of 3 records" in str(err.value)
