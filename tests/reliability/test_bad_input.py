"""Bad input, everywhere: every reader and every command fed broken files and configs.

Each case must end with exit status 2, a message naming the file (and the line and field where
there is one), no traceback, and nothing written where the output would go. The commands run
through click's runner with the model loaders replaced by ones that fail the test: input must be
refused before any model loads. A few cases run as real processes to show that stderr carries
the message and no traceback.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner

from align.cli import cli
from tests.conftest import ROOT

GOOD = {
    "instructions": {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    "preferences": {"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "6"},
    "rankings": {"prompt": "What is 2 + 3?", "completions": ["5", "6", "7"], "ranks": [0, 1, 2]},
    "prompts": {"prompt": "What is 2 + 3?"},
    "scored": {"prompt": "What is 2 + 3?", "response": "5"},
}


@dataclass(frozen=True)
class Command:
    """How one command is invoked on a data file, and where its output would go."""

    name: str
    kind: str  # the data kind it reads
    args: Callable[[Path, Path, Path], list[str]]  # (data, output, fake model dir) -> argv

    def argv(self, data: Path, tmp: Path) -> tuple[list[str], Path]:
        out = tmp / ("out.jsonl" if self.name.startswith(("data", "reward score")) else "out")
        return self.args(data, out, fake_model(tmp)), out


def fake_model(tmp: Path) -> Path:
    """A directory that passes the path checks; the loaders are replaced, so nothing reads it."""
    path = tmp / "model"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text("{}")
    (path / "align_base.json").write_text(json.dumps({"name": str(path), "path": str(path), "quantization": "none",
                                                      "tuning": "lora"}))
    return path


def stage(command: str, data_key: str, *extra: str) -> Callable[[Path, Path, Path], list[str]]:
    return lambda data, out, model: [command, "--set", f"{data_key}={data}", "--set", f"model.name={model}",
                                     "--set", "tracking.wandb=false", *extra, "--out", str(out)]


RULE = ("--set", "reward.function=tests.ppo.toy_reward:digit_count")
COMMANDS = [
    *(Command(f"data validate --kind {k}", k, lambda d, o, m, k=k: ["data", "validate", str(d), "--kind", k])
      for k in ("instructions", "preferences", "rankings", "prompts")),
    Command("sft", "instructions", stage("sft", "data.train")),
    Command("reward/preferences", "preferences", stage("reward", "data.train")),
    Command("reward/rankings", "rankings", stage("reward", "data.train")),
    Command("dpo/preferences", "preferences", stage("dpo", "data.train")),
    Command("dpo/rankings", "rankings", stage("dpo", "data.train")),
    Command("ppo", "prompts", stage("ppo", "data.prompts", "--set", "data.eval_prompts=null", "--set", "reward.model=null",
                                    *RULE, "--set", "training.batch_size=1", "--set", "training.mini_batch_size=1")),
    Command("grpo", "prompts", stage("grpo", "data.prompts", *RULE)),
    Command("rloo", "prompts", stage("rloo", "data.prompts", *RULE)),
    Command("reward score", "scored", lambda d, o, m: ["reward", "score", "--model", str(m), "--data", str(d), "-o", str(o)]),
    *(Command(f"data convert --from {s}", {"alpaca": "instructions", "dolly": "instructions"}.get(s, s),
              lambda d, o, m, s=s: ["data", "convert", "--from", s, str(d), "-o", str(o)])
      for s in ("hh-rlhf", "oasst", "alpaca", "dolly")),
]


def invoke(argv: list[str]):
    return CliRunner().invoke(cli, argv)


def assert_refused(result, expected: list[str], out: Path) -> None:
    output = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}: {output[-2000:]}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    for text in expected:
        assert text in output, f"{text!r} not in:\n{output[-2000:]}"
    assert not out.exists(), f"{out} was written: {list(out.iterdir()) if out.is_dir() else out.read_text()[:200]}"


# ---------------------------------------------------------------- broken files, for every command

def gz_cut(rows: list[dict]) -> bytes:
    whole = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in rows * 400))
    return whole[: len(whole) // 2]


def jsonl(*lines) -> bytes:
    return b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines)


# name -> (file name, content (bytes, or None for a directory, or a callable making the path), expected texts);
# {good} is the command's good record
FILE_FAULTS: dict[str, tuple[str, Callable[[dict], bytes | None], list[str]]] = {
    "truncated gzip": ("d.jsonl.gz", lambda good: gz_cut([good]), ["d.jsonl.gz:", "truncated or corrupt gzip"]),
    "not gzip": ("d.jsonl.gz", lambda good: jsonl(good), ["d.jsonl.gz", "corrupt gzip"]),
    "truncated json.gz": ("d.json.gz", lambda good: gz_cut([good])[:40], ["d.json.gz", "truncated or corrupt gzip"]),
    "malformed JSON line": ("d.jsonl", lambda good: jsonl(good, b'{"prompt": "a", '), ["d.jsonl:2: malformed JSON"]),
    "not an object": ("d.jsonl", lambda good: jsonl(good, [1, 2]), ["d.jsonl:2: expected a JSON object, got list"]),
    "non-UTF-8 line": ("d.jsonl", lambda good: jsonl(good, b'{"prompt": "caf\xe9"}'), ["d.jsonl:2: not UTF-8 (byte 0xe9"]),
    "non-UTF-8 json": ("d.json", lambda good: json.dumps([good]).encode() + b"\n\xff", ["d.json:2: not UTF-8"]),
    "empty file": ("d.jsonl", lambda good: b"", ["d.jsonl", "no records"]),
    "blank lines only": ("d.jsonl", lambda good: b"\n  \n\t\n", ["d.jsonl", "no records"]),
    "empty .json": ("d.json", lambda good: b"", ["d.json", "empty file"]),
    "truncated .json": ("d.json", lambda good: json.dumps([good, good]).encode()[:-9], ["d.json:1: malformed JSON"]),
    "json scalar": ("d.json", lambda good: b"42", ["d.json", "expected a JSON array"]),
    "huge malformed line": ("d.jsonl", lambda good: jsonl(good, b'{"prompt": "' + b"x" * 3_000_000),
                            ["d.jsonl:2: malformed JSON"]),
    "deeply nested line": ("d.jsonl", lambda good: jsonl(good, b"[" * 200_000), ["d.jsonl:2", "nested too deeply"]),
    "huge keys": ("d.jsonl", lambda good: jsonl(good, {"k" * 1_000_000: 1}), ["d.jsonl:2: "]),
    "record over the size limit": ("d.jsonl", lambda good: jsonl(good, {"prompt": "x" * 8_999_986}),
                                   ["d.jsonl:2: record is 9.0 MB, over the 8 MB limit per record (ALIGN_MAX_RECORD_MB)"]),
    "csv unbalanced quote": ("d.csv", lambda good: b'prompt,response\n"q,a\nb,c\n', ["d.csv:2: malformed CSV"]),
    "garbage parquet": ("d.parquet", lambda good: b"PAR1 not really", ["d.parquet: not a readable parquet file"]),
    "unknown extension": ("d.txt", lambda good: jsonl(good), ["d.txt: unknown file type"]),
    "directory": ("d.jsonl", lambda good: None, ["d.jsonl: is a directory"]),
    "broken saved dataset": ("d", lambda good: "dataset", ["d: not a readable saved dataset"]),
    "missing file": ("nothere.jsonl", lambda good: "missing", ["nothere.jsonl: no such file"]),
}

# the converters skip bad records and list them (tested below); for them a file some of whose
# lines are fine still converts, so they meet only the faults that leave nothing to convert
PARTLY_GOOD = {"malformed JSON line", "not an object", "non-UTF-8 line", "huge malformed line", "deeply nested line",
               "huge keys", "record over the size limit"}


def make_file(tmp: Path, name: str, content) -> Path:
    path = tmp / name
    if content is None:
        path.mkdir()
    elif content == "dataset":
        path.mkdir()
        (path / "dataset_info.json").write_text("{not json")
        (path / "state.json").write_text("{}")
    elif content != "missing":
        path.write_bytes(content)
    return path


FILE_CASES = [pytest.param(c, f, id=f"{c.name}: {f}") for c in COMMANDS for f in FILE_FAULTS
              if not (c.name.startswith("data convert") and f in PARTLY_GOOD)]


@pytest.mark.parametrize(("command", "fault"), FILE_CASES)
def test_broken_files(command: Command, fault: str, tmp_path, no_models):
    name, content, expected = FILE_FAULTS[fault]
    good = GOOD.get(command.kind, {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"})
    data = make_file(tmp_path, name, content(good))
    argv, out = command.argv(data, tmp_path)
    result = invoke(argv)
    assert_refused(result, expected, out)
    assert len(result.output) < 4000  # one message, however big the bad line


# ---------------------------------------------------------------- bad records: FILE:LINE: field "x": reason

RECORD_FAULTS: dict[str, list[tuple[str, object, str]]] = {
    # (case, record on line 2, expected text after `FILE:2: `)
    "instructions": [
        ("messages not a list", {"messages": "hi"}, 'field "messages": expected a non-empty list'),
        ("messages empty", {"messages": []}, 'field "messages": expected a non-empty list'),
        ("unknown role", {"messages": [{"role": "bot", "content": "q"}, {"role": "assistant", "content": "a"}]},
         'field "messages[0].role": expected one of system, user, assistant'),
        ("content not a string", {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]},
         'field "messages[0].content": missing or not a string'),
        ("empty response", {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},
         'field "messages[1].content": empty response'),
        ("empty user turn", {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "a"}]},
         'field "messages": needs a non-empty user message'),
        ("last turn not assistant", {"messages": [{"role": "user", "content": "q"}]},
         'field "messages": the last message must be the assistant'),
        ("prompt empty", {"prompt": "", "completion": "a"}, 'field "prompt": empty'),
        ("prompt a number", {"prompt": 5, "completion": "a"}, 'field "prompt": expected a string, got int'),
        ("prompt an object", {"prompt": {"text": "q"}, "completion": "a"}, 'field "prompt": expected a string, got dict'),
        ("completion missing", {"prompt": "q"}, 'field "completion": missing'),
        ("alpaca output empty", {"instruction": "x", "input": "", "output": ""}, 'field "output": empty'),
        ("alpaca input a number", {"instruction": "x", "input": 3, "output": "y"}, 'field "input": expected a string'),
        ("instruction a list", {"instruction": ["x"], "output": "y"}, 'field "instruction": expected a string, got list'),
        ("dolly response null", {"instruction": "x", "context": "", "response": None}, 'field "response": missing'),
        ("no shape", {"text": "x"}, "no known shape"),
    ],
    "preferences": [
        ("rejected missing", {"prompt": "q", "chosen": "a"}, 'field "rejected": missing'),
        ("identical", {"prompt": "q", "chosen": "a", "rejected": "a "}, 'field "rejected": identical to chosen'),
        ("chosen a number", {"prompt": "q", "chosen": 1, "rejected": "b"}, 'field "chosen": expected a string, got int'),
        # an empty reply is a real answer (align.core.records); two empty ones leave nothing to prefer
        ("both blank", {"prompt": "q", "chosen": "  ", "rejected": ""}, 'field "rejected": identical to chosen'),
        ("prompt empty", {"prompt": "", "chosen": "a", "rejected": "b"}, 'field "prompt": empty'),
        ("prompt null", {"prompt": None, "chosen": "a", "rejected": "b"}, 'field "prompt": missing'),
        ("margin a string", {"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"}, 'field "margin": expected a number'),
        ("margin NaN", b'{"prompt": "q", "chosen": "a", "rejected": "b", "margin": NaN}', 'field "margin": must be a finite number'),
        ("margin Infinity", b'{"prompt": "q", "chosen": "a", "rejected": "b", "margin": -Infinity}',
         'field "margin": must be a finite number'),
        ("chosen as user turns", {"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
         'field "chosen": a completion given as messages must hold only assistant turns'),
        ("raw HH-RLHF", {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"},
         'field "prompt": missing: this looks like a raw HH-RLHF transcript'),
        ("no shape", {"question": "q"}, "no known shape"),
    ],
    "rankings": [
        ("completions missing", {"prompt": "q", "ranks": [0, 1]}, 'field "completions": missing or not a list'),
        ("one completion", {"prompt": "q", "completions": ["a"], "ranks": [0]}, 'field "completions": a ranking needs at least 2'),
        ("completion a number", {"prompt": "q", "completions": ["a", 7], "ranks": [0, 1]},
         'field "completions[1]": expected a string, got int'),
        ("two completions empty", {"prompt": "q", "completions": ["", "a", " "], "ranks": [0, 1, 2]},
         'field "completions[2]": identical to completions[0]'),
        ("ranks too few", {"prompt": "q", "completions": ["a", "b", "c"], "ranks": [0, 1]}, 'field "ranks": has 2 entries for 3'),
        ("rank negative", {"prompt": "q", "completions": ["a", "b"], "ranks": [0, -1]}, 'field "ranks[1]": expected an integer >= 0'),
        ("rank a float", {"prompt": "q", "completions": ["a", "b"], "ranks": [0, 1.5]}, 'field "ranks[1]": expected an integer'),
        ("rank a string", {"prompt": "q", "completions": ["a", "b"], "ranks": [0, "1"]}, 'field "ranks[1]": expected an integer'),
        ("rank a bool", {"prompt": "q", "completions": ["a", "b"], "ranks": [True, 0]}, 'field "ranks[0]": expected an integer'),
        ("ranks not a list", {"prompt": "q", "completions": ["a", "b"], "ranks": "01"}, 'field "ranks": missing or not a list'),
        ("all tie", {"prompt": "q", "completions": ["a", "b"], "ranks": [0, 0]}, 'field "ranks": all completions tie'),
        ("duplicate completion", {"prompt": "q", "completions": ["a", "b", "a"], "ranks": [0, 1, 2]},
         'field "completions[2]": identical to completions[0]: no preference to learn'),
        ("prompt empty list", {"prompt": [], "completions": ["a", "b"], "ranks": [0, 1]}, 'field "prompt": expected a non-empty list'),
        ("huge role", {"prompt": [{"role": "r" * 1_000_000, "content": "q"}], "completions": ["a", "b"], "ranks": [0, 1]},
         'field "prompt[0].role": expected one of system, user, assistant'),
        ("oasst export", {"message_tree_id": "t", "prompt": {}}, "this looks like an OpenAssistant export"),
    ],
    "prompts": [
        ("prompt empty", {"prompt": ""}, 'field "prompt": empty'),
        ("prompt a number", {"prompt": 3}, 'field "prompt": expected a string, got int'),
        ("assistant turn only", {"messages": [{"role": "assistant", "content": "a"}]}, 'field "messages": no non-empty user message'),
        ("empty messages", {"messages": [{"role": "user", "content": ""}]}, 'field "messages": empty'),
        ("content missing", {"messages": [{"role": "user"}]}, 'field "messages[0].content": missing or not a string'),
        ("reference a number", {"prompt": "q", "reference": 5}, 'field "reference": expected a string, got int'),
        ("no shape", {"query": "q"}, "no known shape"),
    ],
    "scored": [
        ("completions not a list", {"prompt": "q", "completions": "a"}, 'field "completions": expected a non-empty list'),
        ("completion a number", {"prompt": "q", "completions": ["a", 2]}, 'field "completions[1]": expected a string'),
        ("nothing to score", {"prompt": "q"}, "no completion to score"),
        ("prompt missing", {"response": "a"}, 'field "prompt": missing'),
        ("response not text", {"prompt": "q", "response": {"text": "a"}}, 'field "response": expected a string, got dict'),
    ],
}

RECORD_CASES = [pytest.param(c, record, expected, id=f"{c.name}: {case}")
                for c in COMMANDS if not c.name.startswith("data convert")
                for case, record, expected in RECORD_FAULTS[c.kind]
                # the reward stage reads preferences or rankings by their first record: one kind a file
                if not (c.name.endswith("/preferences") and case == "raw HH-RLHF")]


@pytest.mark.parametrize(("command", "record", "expected"), RECORD_CASES)
def test_bad_records(command: Command, record, expected: str, tmp_path, no_models):
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl(GOOD[command.kind], record))
    argv, out = command.argv(data, tmp_path)
    result = invoke(argv)
    assert_refused(result, [f"d.jsonl:2: {expected}"], out)
    assert len(result.output) < 4000


# converters: a record they cannot convert is skipped and listed; a file with none they can is an error
CONVERT_FAULTS = [
    ("hh-rlhf", {"chosen": 5, "rejected": "x"}, 'field "chosen": missing or not a string'),
    ("hh-rlhf", {"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi"}, 'does not end with an Assistant turn'),
    ("hh-rlhf", {"chosen": "hello\n\nAssistant: a", "rejected": "hello\n\nAssistant: b"}, 'does not start with'),
    ("hh-rlhf", {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"}, "do not share"),
    ("hh-rlhf", {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: a\n\nAssistant: x"}, "identical"),
    ("oasst", {"message_tree_id": "t", "prompt": "not a message"}, 'field "prompt": missing or not a message'),
    ("oasst", {"message_tree_id": "t", "prompt": {"message_id": "m", "role": ["prompter"], "text": "q", "replies": []}},
     'field "role"'),
    ("oasst", {"message_tree_id": "t", "prompt": {"message_id": "m", "role": "prompter", "text": "q", "replies": [
        {"message_id": "a", "role": "assistant", "text": "x", "rank": "best"},
        {"message_id": "b", "role": "assistant", "text": "y", "rank": 1}]}}, 'field "rank": expected an integer >= 0'),
    ("oasst", {"message_tree_id": "t", "prompt": {"message_id": "m", "role": "prompter", "text": "q", "replies": [
        {"message_id": "a", "role": "assistant", "text": "x", "rank": float("inf")},
        {"message_id": "b", "role": "assistant", "text": "y", "rank": 1}]}}, 'field "rank"'),
    ("oasst", {"message_id": ["m"], "parent_id": None, "role": "prompter", "text": "q"}, 'field "message_id": missing or not'),
    ("oasst", {"message_id": "m", "parent_id": ["p"], "role": "prompter", "text": "q"}, 'field "parent_id": expected a message id'),
    ("alpaca", {"instruction": "x", "input": "", "output": ""}, 'field "output": empty'),
    ("alpaca", {"instruction": 1, "output": "y"}, 'field "instruction": expected a string'),
    ("dolly", {"instruction": "x", "context": 3, "response": "y"}, 'field "context": expected a string'),
    ("dolly", {"instruction": "x", "context": "", "response": ""}, 'field "response": empty'),
]


@pytest.mark.parametrize(("source", "record", "expected"), CONVERT_FAULTS,
                         ids=[f"{s}: {e[:40]}" for s, _, e in CONVERT_FAULTS])
def test_converters_refuse_a_file_with_nothing_to_convert(source, record, expected, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(record) + "\n")
    out = tmp_path / "out.jsonl"
    result = invoke(["data", "convert", "--from", source, str(data), "-o", str(out), "--lang", "en"]
                    if source == "oasst" and "inf" in json.dumps(record) else
                    ["data", "convert", "--from", source, str(data), "-o", str(out)])
    assert_refused(result, ["nothing converted", "d.jsonl:1", expected], out)


def test_a_converter_keeps_the_good_records_and_lists_the_bad(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl({"instruction": "x", "input": "", "output": "y"}, b"{oops", {"instruction": "x", "output": ""}))
    out = tmp_path / "out.jsonl"
    result = invoke(["data", "convert", "--from", "alpaca", str(data), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "d.jsonl:2: malformed JSON" in result.output and 'd.jsonl:3: field "output": empty' in result.output
    assert len(out.read_text().splitlines()) == 1


# ---------------------------------------------------------------- configs and options

# the same settings under each stage's names
STAGE_KEYS = {
    "sft": ("training", "training.batch_size", "training.learning_rate"),
    "reward": ("training", "training.batch_size", "training.learning_rate"),
    "ppo": ("training", "training.batch_size", "training.learning_rate"),
    "dpo": ("training", "training.batch_size", "training.learning_rate"),
    "grpo": ("training", "training.batch_size", "training.learning_rate"),
    "rloo": ("training", "training.batch_size", "training.learning_rate"),
}
STAGE_ONLY = {  # one more bad value each stage alone has
    "sft": ("training:\n  warmup_ratio: -0.1\n", "c.yaml:2: training.warmup_ratio: must be in [0, 1)"),
    "reward": ("training:\n  max_grad_norm: 0\n", "c.yaml:2: training.max_grad_norm: must be > 0"),
    "ppo": ("training:\n  gamma: 2\n", "c.yaml:2: training.gamma: must be in [0, 1]"),
    "dpo": ("data:\n  eval_fraction: 1.5\n", "c.yaml:2: data.eval_fraction: must be in [0, 1)"),
    "grpo": ("generation:\n  num_generations: 1\n", "c.yaml:2: generation.num_generations: needs >= 2"),
    "rloo": ("training:\n  lr_scheduler: cosin\n", "c.yaml:2: training.lr_scheduler: 'cosin' is not one of"),
}


def config_faults(stage: str) -> list[tuple[str, bytes | None, list[str]]]:
    section, batch, lr = STAGE_KEYS[stage]
    b, l = batch.split(".")[1], lr.split(".")[1]
    return [
        ("bad YAML", b"training: [unclosed\n", ["c.yaml: not valid YAML", "line"]),
        ("tab indentation", b"training:\n\tbatch_size: 4\n", ["c.yaml: not valid YAML"]),
        ("top-level list", b"- a\n- b\n", ["c.yaml:1: expected a mapping of settings"]),
        ("empty file", b"", ["c.yaml: holds no settings"]),
        ("comments only", b"# nothing here\n", ["c.yaml: holds no settings"]),
        ("non-UTF-8", b"out_dir: caf\xe9\n", ["c.yaml: not valid YAML: not UTF-8"]),
        ("directory", None, ["c.yaml: is a directory"]),
        ("unknown key", b"out_dir: x\nepochz: 3\n", ["c.yaml:2: unknown key 'epochz'"]),
        ("unknown nested key", f"{section}:\n  lr: 1\n".encode(), [f"c.yaml:2: unknown key '{section}.lr'"]),
        ("batch size 0", f"{section}:\n  {b}: 0\n".encode(), [f"c.yaml:2: {batch}: must be > 0, got 0"]),
        ("batch size -1", f"{section}:\n  {b}: -1\n".encode(), [f"c.yaml:2: {batch}: must be > 0, got -1"]),
        ("batch size a word", f"{section}:\n  {b}: eight\n".encode(), [f"c.yaml:2: {batch}: expected an integer"]),
        ("batch size a float", f"{section}:\n  {b}: 2.5\n".encode(), [f"c.yaml:2: {batch}: expected an integer"]),
        ("learning rate negative", f"{section}:\n  {l}: -1.0e-4\n".encode(), [f"c.yaml:2: {lr}: must be > 0"]),
        ("learning rate 0", f"{section}:\n  {l}: 0\n".encode(), [f"c.yaml:2: {lr}: must be > 0"]),
        ("learning rate NaN", f"{section}:\n  {l}: .nan\n".encode(), [f"c.yaml:2: {lr}: must be a finite number, got nan"]),
        ("learning rate inf", f"{section}:\n  {l}: .inf\n".encode(), [f"c.yaml:2: {lr}: must be a finite number, got inf"]),
        ("section twice", f"{section}:\n  {b}: 4\nout_dir: x\n{section}:\n  {l}: 1.0e-4\n".encode(),
         [f"c.yaml:4: duplicate key '{section}' (first at line 1)"]),
        ("section a number", f"{section}: 5\n".encode(), [f"c.yaml:1: {section}: expected a mapping of settings"]),
        ("lora rank 0", b"model:\n  lora:\n    r: 0\n", ["c.yaml:3: model.lora.r: must be >= 1"]),
        ("bad choice", b"model:\n  quantization: int3\n", ["c.yaml:2: model.quantization: 'int3' is not one of"]),
        ("wandb maybe", b"tracking:\n  wandb: maybe\n", ["c.yaml:2: tracking.wandb: expected true or false"]),
        ("logging every 0 steps", b"tracking:\n  logging_steps: 0\n", ["c.yaml:2: tracking.logging_steps: must be > 0"]),
        ("lora dropout 1", b"model:\n  lora:\n    dropout: 1\n", ["c.yaml:3: model.lora.dropout: must be in [0, 1)"]),
        (f"{stage} only", STAGE_ONLY[stage][0].encode(), [STAGE_ONLY[stage][1]]),
    ]


CONFIG_CASES = [pytest.param(s, case, content, expected, id=f"{s}: {case}")
                for s in STAGE_KEYS for case, content, expected in config_faults(s)]


@pytest.mark.parametrize(("stage", "case", "content", "expected"), CONFIG_CASES)
def test_bad_configs(stage, case, content, expected, tmp_path, no_models):
    config = tmp_path / "c.yaml"
    if content is None:
        config.mkdir()
    else:
        config.write_bytes(content)
    out = tmp_path / "out"
    result = invoke([stage, "--config", str(config), "--set", f"model.name={fake_model(tmp_path)}", "--out", str(out)])
    assert_refused(result, expected, out)


OVERRIDE_FAULTS = [
    ("no equals sign", "training", "expected KEY=VALUE"),
    ("empty key", "=3", "expected KEY=VALUE"),
    ("unknown key", "training.lr=1", "unknown key 'training.lr'"),
    ("negative batch", "training.batch_size=-1", "defaults + --set: training.batch_size: must be > 0, got -1"),
    ("zero length", "training.max_length=0", "training.max_length: must be > 0"),
    ("infinite learning rate", "training.learning_rate=inf",
     "defaults + --set: training.learning_rate: must be a finite number, got inf"),
    ("empty data path", "data.train=", "no data file given"),
]


@pytest.mark.parametrize(("case", "override", "expected"), OVERRIDE_FAULTS, ids=[c for c, _, _ in OVERRIDE_FAULTS])
def test_bad_overrides(case, override, expected, tmp_path, no_models):
    out = tmp_path / "out"
    result = invoke(["sft", "--set", f"model.name={fake_model(tmp_path)}", "--set", override, "--out", str(out)])
    assert_refused(result, [expected], out)


def good_file(tmp: Path, kind: str) -> Path:
    path = tmp / f"{kind}.jsonl"
    path.write_bytes(jsonl(*[GOOD[kind]] * 8))
    return path


PATH_FAULTS = [
    ("model dir missing", lambda tmp: ["--set", f"model.name={tmp / 'no-model'}"], "no-model': no such directory"),
    ("model dir without config", lambda tmp: ["--set", f"model.name={tmp}"], "not a model directory (no config.json)"),
    ("adapter missing", lambda tmp: ["--set", f"model.name={fake_model(tmp)}", "--set", f"model.adapter={tmp / 'no'}"],
     "no: not an adapter directory"),
    ("adapter as a pickle", lambda tmp: ["--set", f"model.name={fake_model(tmp)}", "--set", f"model.adapter={pickled_adapter(tmp)}"],
     "no adapter_model.safetensors; align loads weights only from safetensors"),
    ("out is a file", lambda tmp: ["--set", f"model.name={fake_model(tmp)}", "--out", str(a_file(tmp))],
     "a-file: is a file, not an output directory"),
]


def pickled_adapter(tmp: Path) -> Path:
    path = tmp / "pickled"
    path.mkdir()
    (path / "adapter_config.json").write_text("{}")
    (path / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    return path


def a_file(tmp: Path) -> Path:
    (tmp / "a-file").write_text("x")
    return tmp / "a-file"


@pytest.mark.parametrize("stage", ["sft", "reward", "ppo", "dpo", "grpo"])
@pytest.mark.parametrize(("case", "args", "expected"), PATH_FAULTS, ids=[c for c, _, _ in PATH_FAULTS])
def test_bad_paths_are_found_before_the_output_dir_is_written(stage, case, args, expected, tmp_path, no_models):
    kind = {"sft": "instructions", "reward": "preferences", "dpo": "preferences"}.get(stage, "prompts")
    key = "data.prompts" if kind == "prompts" else "data.train"
    extra = ["--set", "reward.model=null", *RULE, "--set", "data.eval_prompts=null"] if stage == "ppo" else \
        list(RULE) if stage == "grpo" else []
    out = tmp_path / "out"
    argv = [stage, "--set", f"{key}={good_file(tmp_path, kind)}", "--set", "tracking.wandb=false", *extra,
            *args(tmp_path)]
    argv += [] if "--out" in argv else ["--out", str(out)]
    result = invoke(argv)
    assert_refused(result, [expected], out)
    assert (tmp_path / "a-file").read_text() == "x" if case == "out is a file" else True


REWARD_INPUT_FAULTS = [
    ("ppo reward model missing", ["ppo", "--set", "reward.model=/nowhere/rm"], "/nowhere/rm: not a reward model"),
    ("ppo reward function unknown", ["ppo", "--set", "reward.model=null", "--set", "reward.function=tests.nope:f"],
     "cannot import module 'tests.nope'"),
    ("ppo reward function malformed", ["ppo", "--set", "reward.model=null", "--set", "reward.function=nocolon"],
     "expected module:function"),
    ("ppo neither reward", ["ppo", "--set", "reward.model=null"], "set reward.model"),
    ("ppo ptx data missing", ["ppo", *RULE, "--set", "reward.model=null", "--set", "training.ptx_coef=0.5", "--set",
                              "training.ptx_data=/nowhere/sft.jsonl"], "/nowhere/sft.jsonl: no such file"),
    ("ppo fewer prompts than a batch", ["ppo", *RULE, "--set", "reward.model=null", "--set", "training.batch_size=16",
                                        "--set", "training.mini_batch_size=16"], "8 prompts, fewer than training.batch_size=16"),
    ("grpo reward model missing", ["grpo", "--set", "reward.model=/nowhere/rm"], "/nowhere/rm: not a reward model"),
    ("grpo reward function missing", ["grpo", "--set", "reward.function=tests.ppo.toy_reward:nope"], "has no function 'nope'"),
]


@pytest.mark.parametrize(("case", "argv", "expected"), REWARD_INPUT_FAULTS, ids=[c for c, _, _ in REWARD_INPUT_FAULTS])
def test_bad_reward_inputs(case, argv, expected, tmp_path, no_models):
    out = tmp_path / "out"
    no_eval = ["--set", "data.eval_prompts=null"] if argv[0] == "ppo" else []
    result = invoke([*argv, *no_eval, "--set", f"data.prompts={good_file(tmp_path, 'prompts')}",
                     "--set", f"model.name={fake_model(tmp_path)}", "--set", "tracking.wandb=false", "--out", str(out)])
    assert_refused(result, [expected], out)


BASE = json.dumps({"name": "MODEL", "path": "MODEL", "quantization": "none", "tuning": "lora"})
SCORE_FAULTS = [
    # (case, extra options, files in the reward dir, expected)
    ("batch size 0", ["--batch-size", "0"], {"align_base.json": BASE}, "Invalid value for '--batch-size': 0 is not in the range x>=1"),
    ("batch size -1", ["--batch-size", "-1"], {"align_base.json": BASE}, "Invalid value for '--batch-size'"),
    ("not a reward dir", [], {}, "rm: not a reward model (no align_base.json"),
    ("damaged base record", [], {"align_base.json": "{trunc"}, "align_base.json: damaged base record (JSONDecodeError"),
    ("base record missing fields", [], {"align_base.json": "{}"}, "align_base.json: damaged base record (KeyError"),
    ("base record bad tuning", [], {"align_base.json": BASE.replace('"lora"', '"magic"')},
     "align_base.json: damaged base record (ValueError"),
    ("damaged normaliser", [], {"align_base.json": BASE, "normaliser.json": '{"mean": 1}'}, "normaliser.json: not a normaliser"),
    ("normaliser not JSON", [], {"align_base.json": BASE, "normaliser.json": "\x00"}, "normaliser.json: not a normaliser"),
    ("normaliser std 0", [], {"align_base.json": BASE, "normaliser.json": '{"mean": 1, "std": 0}'},
     "normaliser.json: mean must be finite and std > 0"),
    ("output is a directory", ["-o", "DIR"], {"align_base.json": BASE}, "DIR: is a directory; give the output file's name"),
]


@pytest.mark.parametrize(("case", "options", "files", "expected"), SCORE_FAULTS, ids=[c[0] for c in SCORE_FAULTS])
def test_reward_score_refuses_bad_models_and_options(case, options, files, expected, tmp_path, no_models):
    model = tmp_path / "rm"
    model.mkdir()
    for name, text in files.items():
        (model / name).write_text(text.replace("MODEL", str(fake_model(tmp_path))))
    (tmp_path / "DIR").mkdir()
    out = tmp_path / "out.jsonl"
    options = [str(tmp_path / "DIR") if o == "DIR" else o for o in options]
    result = invoke(["reward", "score", "--model", str(model), "--data", str(good_file(tmp_path, "scored")),
                     *([] if "-o" in options else ["-o", str(out)]), *options])
    assert_refused(result, [expected], out)
    assert not any((tmp_path / "DIR").iterdir())


OPTION_FAULTS = [
    ("convert --show-skipped -1", ["data", "convert", "--from", "alpaca", "DATA", "-o", "OUT", "--show-skipped", "-1"],
     "Invalid value for '--show-skipped'"),
    ("convert unknown source", ["data", "convert", "--from", "sharegpt", "DATA", "-o", "OUT"], "Invalid value for '--from'"),
    ("convert output is a directory", ["data", "convert", "--from", "alpaca", "DATA", "-o", "DIR"], "DIR: is a directory"),
    ("validate unknown kind", ["data", "validate", "DATA", "--kind", "pairs"], "Invalid value for '--kind'"),
    ("resume and overwrite", ["sft", "--resume", "--overwrite", "--set", "data.train=DATA", "--set", "model.name=MODEL",
                              "--out", "OUT"], "--overwrite (overwrite=True) and --resume (resume=True) contradict each other"),
    ("resume with nothing to resume", ["sft", "--resume", "--set", "data.train=DATA", "--set", "model.name=MODEL",
                                       "--out", "OUT"], "OUT: --resume (resume=True) given but there is no checkpoint"),
]


@pytest.mark.parametrize(("case", "argv", "expected"), OPTION_FAULTS, ids=[c for c, _, _ in OPTION_FAULTS])
def test_bad_options(case, argv, expected, tmp_path, no_models):
    (tmp_path / "DIR").mkdir()
    out = tmp_path / "OUT"
    names = {"DATA": str(good_file(tmp_path, "instructions")), "OUT": str(out), "DIR": str(tmp_path / "DIR"),
             "MODEL": str(fake_model(tmp_path))}
    for name, value in names.items():
        argv = [a.replace(name, value) for a in argv]
    result = invoke(argv)
    assert_refused(result, [expected.replace("OUT", "").replace("DIR", "")], out)
    assert not any((tmp_path / "DIR").iterdir())


# ---------------------------------------------------------------- real processes: stderr, no traceback

def run_align(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "align", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_a_real_process_prints_one_message_and_no_traceback(tmp_path):
    cut = tmp_path / "sft.jsonl.gz"
    cut.write_bytes(gz_cut([GOOD["instructions"]]))
    config = tmp_path / "c.yaml"
    config.write_text("training:\n  batch_size: -1\n")
    oasst_dir = tmp_path / "trees"
    oasst_dir.mkdir()
    cases = [
        (["sft", "--set", f"data.train={cut}", "--out", str(tmp_path / "o1")], "sft.jsonl.gz:", tmp_path / "o1"),
        (["reward", "--config", str(config), "--out", str(tmp_path / "o2")], "c.yaml:2: training.batch_size: must be > 0",
         tmp_path / "o2"),
        (["data", "convert", "--from", "oasst", str(oasst_dir), "-o", str(tmp_path / "r.jsonl")], "trees: is a directory",
         tmp_path / "r.jsonl"),
    ]
    for argv, expected, out in cases:
        done = run_align(*argv)
        assert done.returncode == 2, (argv, done.stderr[-2000:])
        assert expected in done.stderr and done.stderr.startswith("error: "), done.stderr[-2000:]
        assert "Traceback" not in done.stderr + done.stdout
        assert not out.exists()
