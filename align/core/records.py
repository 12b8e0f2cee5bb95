"""The data formats of DESIGN.md: readers, record types, and validation that names FILE:LINE.

Four kinds of data, each read from JSONL (plain or gzip), JSON (an array, or JSONL under a .json
name as many hubs ship it), CSV, parquet, or a directory saved by `datasets.save_to_disk`:

    instructions  {"messages"} | {"prompt","completion"} | Alpaca {"instruction","input","output"}
                  | Dolly {"instruction","context","response"}
    preferences   {"prompt","chosen","rejected"} (strings or message lists), optional "margin"
    rankings      {"prompt","completions","ranks"}, rank 0 best, equal ranks are ties
    prompts       {"prompt"} or {"messages"}, optional "reference"

Readers never stop at the first bad record: they collect every problem, so a user fixes a file
in one pass. Training refuses a file with any problem, before a model is loaded.

A UTF-8 byte-order mark at the start of a file is dropped, whatever the format. A record over
ALIGN_MAX_RECORD_MB megabytes (default 8; real conversations are kilobytes) is a problem: one 50 MB
JSONL line once had SFT tokenise for two minutes in 14.5 GB. A JSONL line is measured by its bytes,
before it is parsed; a record of the other formats by its compact JSON.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from align.core.errors import DataError

Kind = Literal["instructions", "preferences", "rankings", "prompts"]
KINDS: tuple[str, ...] = ("instructions", "preferences", "rankings", "prompts")
ROLES = ("system", "user", "assistant")
# ShareGPT-style turns ({"from": "human", "value": ...}) map onto chat roles
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
# a long document in one cell is data, not an error: lift csv's 128 KiB default limit
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
MAX_RECORD_MB = 8.0  # default of ALIGN_MAX_RECORD_MB; megabytes of 10**6 bytes

Messages = tuple  # tuple of {"role": str, "content": str}


@dataclass(frozen=True)
class Row:
    source: str  # "FILE:LINE" (or "FILE: row N" for tables)
    data: dict[str, Any]


@dataclass(frozen=True)
class Instruction:
    """One SFT example: the conversation before the response, and the response to learn."""

    messages: Messages  # prompt turns; the last is the user's
    response: str
    context: str  # Alpaca "input" / Dolly "context"; "" when absent
    source: str


@dataclass(frozen=True)
class Preference:
    prompt: Messages
    chosen: str
    rejected: str
    margin: float | None
    source: str


@dataclass(frozen=True)
class Ranking:
    prompt: Messages
    completions: tuple[str, ...]
    ranks: tuple[int, ...]  # 0 is best; equal ranks are ties
    source: str


@dataclass(frozen=True)
class Prompt:
    messages: Messages
    reference: str | None
    source: str


class Bad(Exception):
    """A problem with one record; the reader adds FILE:LINE."""

    def __init__(self, field: str | None, reason: str):
        self.field, self.reason = clip(field) if field else field, clip(reason, 1000)
        super().__init__(f'field "{self.field}": {self.reason}' if field else self.reason)


def clip(text: str, limit: int = 80) -> str:
    """A message quoting the user's data stays one readable line however long that data is."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit - 30]}... ({len(text)} characters)"


# ---------------------------------------------------------------- reading files


def read_rows(path: str | Path) -> tuple[list[Row], list[str]]:
    """All rows of a data file, and the problems met reading it (bad lines are not rows)."""
    if not str(path).strip():  # Path("") would read as ".", the current directory
        raise DataError(["no data file given (the path is empty)"])
    path = Path(path)
    if not path.exists():
        raise DataError([f"{path}: no such file"])
    if path.is_dir():
        if any((path / marker).exists() for marker in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return _read_hf_dir(path)
        raise DataError([f"{path}: is a directory, not a data file (nor a dataset saved with save_to_disk)"])
    name = path.name.lower()
    stem = name[:-3] if name.endswith(".gz") else name
    try:
        if stem.endswith(".csv"):
            return _read_csv(path)
        if stem.endswith(".parquet"):
            return _read_parquet(path)
        if stem.endswith(".json"):
            return _read_json(path)
        if stem.endswith((".jsonl", ".ndjson")):
            return _read_jsonl(path)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError([f"{path}: truncated or corrupt gzip ({e})"]) from None
    except OSError as e:
        raise DataError([f"{path}: cannot read ({e.strerror or e})"]) from None
    raise DataError([f"{path}: unknown file type; use .jsonl, .json, .csv, .parquet (optionally .gz) or a saved dataset dir"])


def _open_bytes(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def max_record_bytes() -> int:
    """The per-record limit: ALIGN_MAX_RECORD_MB, or MAX_RECORD_MB when it is unset."""
    raw = os.environ.get("ALIGN_MAX_RECORD_MB", "").strip()
    try:
        mb = float(raw) if raw else MAX_RECORD_MB
    except ValueError:
        mb = math.nan
    if not (math.isfinite(mb) and mb > 0):
        raise DataError([f"ALIGN_MAX_RECORD_MB={raw!r}: expected a number of megabytes > 0"])
    return int(mb * 1e6)


def _oversized(where: str, size: int, limit: int) -> str:
    return f"{where}: record is {size / 1e6:.1f} MB, over the {limit / 1e6:g} MB limit per record (ALIGN_MAX_RECORD_MB)"


def _drop_oversized(rows: list[Row], whole: int) -> tuple[list[Row], list[str]]:
    """Rows within the limit, and a problem for each one over it, measured by its compact JSON.

    `whole` is the size of the file or table: when that is within the limit, so is every row."""
    limit = max_record_bytes()
    if whole <= limit:
        return rows, []
    kept, problems = [], []
    for row in rows:
        size = len(json.dumps(row.data, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8"))
        if size > limit:
            problems.append(_oversized(row.source, size, limit))
        else:
            kept.append(row)
    return kept, problems


def _read_jsonl(path: Path) -> tuple[list[Row], list[str]]:
    rows, problems = [], []
    limit = max_record_bytes()
    line_no = 0
    with _open_bytes(path) as f:
        lines = iter(f)
        while True:
            try:
                raw = next(lines, None)
            except (EOFError, gzip.BadGzipFile, zlib.error) as e:
                # name where the damage starts: the lines before it were read
                raise DataError([f"{path}:{line_no + 1}: truncated or corrupt gzip ({e})"]) from None
            if raw is None:
                break
            line_no += 1
            where = f"{path}:{line_no}"
            if len(raw) > limit:
                problems.append(_oversized(where, len(raw), limit))
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(f"{where}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
                continue
            if line_no == 1:
                text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                problems.append(f"{where}: malformed JSON ({e.msg} at column {e.colno})")
                continue
            except RecursionError:
                problems.append(f"{where}: malformed JSON (nested too deeply)")
                continue
            if not isinstance(obj, dict):
                problems.append(f"{where}: expected a JSON object, got {type(obj).__name__}")
                continue
            rows.append(Row(where, obj))
    return rows, problems


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    """A whole file as text; a non-UTF-8 byte is an error naming its line."""
    with _open_bytes(path) as f:
        raw = f.read()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        # e.object, not raw: utf-8-sig counts from after the byte-order mark
        line = e.object[: e.start].count(b"\n") + 1
        raise DataError([f"{path}:{line}: not UTF-8 (byte 0x{e.object[e.start]:02x})"]) from None


def _read_json(path: Path) -> tuple[list[Row], list[str]]:
    text = _read_text(path, "utf-8-sig")  # the byte-order mark, as for every format
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON Lines under a .json name
            return _read_jsonl(path)
        if not text.strip():
            raise DataError([f"{path}: empty file, no records"]) from None
        raise DataError([f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})"]) from None
    except RecursionError:
        raise DataError([f"{path}: malformed JSON (nested too deeply)"]) from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list):
        raise DataError([f"{path}: expected a JSON array of records (or JSON Lines)"])
    rows, problems = [], []
    for i, item in enumerate(obj):
        where = f"{path}: item {i}"
        if isinstance(item, dict):
            rows.append(Row(where, item))
        else:
            problems.append(f"{where}: expected a JSON object, got {type(item).__name__}")
    rows, oversized = _drop_oversized(rows, len(text.encode("utf-8")))
    return rows, problems + oversized


def _read_csv(path: Path) -> tuple[list[Row], list[str]]:
    text = _read_text(path, "utf-8-sig")  # Excel writes a byte-order mark
    # strict: an unbalanced quote is an error, not a cell that silently swallows the lines after it
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    rows = []
    try:
        for record in reader:
            record.pop(None, None)  # cells beyond the header
            rows.append(Row(f"{path}:{reader.line_num}", {k: _cell(v) for k, v in record.items()}))
    except csv.Error as e:
        raise DataError([f"{path}:{reader.line_num + 1}: malformed CSV ({e})"]) from None
    return _drop_oversized(rows, len(text.encode("utf-8")))


def _cell(value: str | None) -> Any:
    """CSV cells holding JSON lists (messages, completions, ranks) are decoded; others stay text."""
    if value and value[:1] in "[{":
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            pass
    return value


def _read_parquet(path: Path) -> tuple[list[Row], list[str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError([f"{path}: not a readable parquet file ({e})"]) from None
    rows = [Row(f"{path}: row {i + 1}", record) for i, record in enumerate(table.to_pylist())]
    return _drop_oversized(rows, table.nbytes)


def _read_hf_dir(path: Path) -> tuple[list[Row], list[str]]:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises many types (FileNotFoundError, JSONDecodeError, ArrowInvalid)
        raise DataError([f"{path}: not a readable saved dataset ({type(e).__name__}: {clip(e, 200)})"]) from None
    if isinstance(data, datasets.DatasetDict):
        if "train" not in data:
            raise DataError([f"{path}: dataset has splits {list(data)}; no 'train' split"])
        data = data["train"]
    rows = [Row(f"{path}: row {i + 1}", record) for i, record in enumerate(data)]
    return _drop_oversized(rows, data.data.nbytes)


# ---------------------------------------------------------------- field checks


def text_field(data: dict[str, Any], field: str, *, required: bool = True, allow_empty: bool = False) -> str:
    if field not in data or data[field] is None:
        if required:
            raise Bad(field, "missing")
        return ""
    value = data[field]
    if not isinstance(value, str):
        raise Bad(field, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise Bad(field, "empty")
    return value


def messages_field(data: dict[str, Any], field: str) -> Messages:
    value = data.get(field)
    if value is None:
        raise Bad(field, "missing")
    if not isinstance(value, list) or not value:
        raise Bad(field, "expected a non-empty list of messages")
    out = []
    for i, message in enumerate(value):
        name = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise Bad(name, "expected an object with role and content")
        if "role" in message:
            role, content = message.get("role"), message.get("content")
        else:
            role, content = SHAREGPT_ROLES.get(message.get("from")), message.get("value")
        if role not in ROLES:
            raise Bad(f"{name}.role", f"expected one of {', '.join(ROLES)}, got {clip(repr(message.get('role', message.get('from'))))}")
        if not isinstance(content, str):
            raise Bad(f"{name}.content", "missing or not a string")
        out.append({"role": role, "content": content})
    return tuple(out)


def prompt_field(data: dict[str, Any], field: str = "prompt") -> Messages:
    """A prompt as a string (one user turn) or as a message list."""
    value = data.get(field)
    if isinstance(value, list):
        messages = messages_field(data, field)
        if not any(m["content"].strip() for m in messages):
            raise Bad(field, "empty")
        return messages
    return ({"role": "user", "content": text_field(data, field)},)


def completion_field(data: dict[str, Any], field: str, name: str | None = None) -> str:
    """A completion as a string, or as assistant messages (their contents joined).

    `name` is how errors call the field when it is not a key of `data` (`completions[2]`)."""
    if name is not None:
        return completion_field({name: data[field]}, name)
    value = data.get(field)
    if isinstance(value, list):
        messages = messages_field(data, field)
        if any(m["role"] != "assistant" for m in messages):
            raise Bad(field, "a completion given as messages must hold only assistant turns")
        value = "\n".join(m["content"] for m in messages)
        if not value.strip():
            raise Bad(field, "empty")
        return value
    return text_field(data, field)


# ---------------------------------------------------------------- the four kinds


def parse_instruction(row: Row) -> Instruction:
    d = row.data
    if "messages" in d or "conversations" in d:
        field = "messages" if "messages" in d else "conversations"
        messages = messages_field(d, field)
        if messages[-1]["role"] != "assistant":
            raise Bad(field, "the last message must be the assistant's response")
        if not messages[-1]["content"].strip():
            raise Bad(f"{field}[{len(messages) - 1}].content", "empty response")
        if len(messages) < 2 or not any(m["role"] == "user" and m["content"].strip() for m in messages[:-1]):
            raise Bad(field, "needs a non-empty user message before the response")
        return Instruction(messages[:-1], messages[-1]["content"], "", row.source)
    if "prompt" in d or "completion" in d:
        return Instruction(prompt_field(d), completion_field(d, "completion"), "", row.source)
    if "instruction" in d:
        if "output" in d or "input" in d:  # Alpaca
            response, context = text_field(d, "output"), text_field(d, "input", required=False, allow_empty=True)
        elif "response" in d or "context" in d:  # Dolly
            response, context = text_field(d, "response"), text_field(d, "context", required=False, allow_empty=True)
        else:
            raise Bad("output", 'missing (Alpaca shape has "output", Dolly shape has "response")')
        user = {"role": "user", "content": text_field(d, "instruction")}
        return Instruction((user,), response, context, row.source)
    raise Bad(None, _no_shape(d, 'instructions: "messages", "prompt"+"completion", Alpaca "instruction"+"input"+"output" or Dolly "instruction"+"context"+"response"'))


def parse_preference(row: Row) -> Preference:
    d = row.data
    if "prompt" not in d and isinstance(d.get("chosen"), str) and d["chosen"].lstrip("\n").startswith("Human:"):
        raise Bad("prompt", "missing: this looks like a raw HH-RLHF transcript; convert the file first with "
                            "`align data convert --from hh-rlhf FILE -o prefs.jsonl`")
    if "prompt" not in d and isinstance(d.get("chosen"), list) and isinstance(d.get("rejected"), list):
        prompt, chosen, rejected = _split_implicit_prompt(d)
    else:
        if "chosen" not in d and "rejected" not in d:
            raise Bad(None, _no_shape(d, 'preferences: "prompt", "chosen", "rejected"'))
        prompt = prompt_field(d)
        chosen, rejected = completion_field(d, "chosen"), completion_field(d, "rejected")
    if chosen.strip() == rejected.strip():
        raise Bad("rejected", "identical to chosen: no preference to learn")
    margin = d.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        raise Bad("margin", f"expected a number, got {type(margin).__name__}")
    if margin is not None and not math.isfinite(margin):
        raise Bad("margin", f"must be a finite number, got {margin}")  # JSON readers accept NaN and Infinity
    return Preference(prompt, chosen, rejected, None if margin is None else float(margin), row.source)


def _split_implicit_prompt(d: dict[str, Any]) -> tuple[Messages, str, str]:
    """TRL's implicit-prompt shape: chosen and rejected are whole conversations sharing a prefix."""
    chosen, rejected = messages_field(d, "chosen"), messages_field(d, "rejected")
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise Bad("chosen", "with no prompt field, chosen and rejected must end with an assistant turn")
    if chosen[:-1] != rejected[:-1] or len(chosen) < 2:
        raise Bad("rejected", "with no prompt field, chosen and rejected must share every turn but the last")
    for field, last in (("chosen", chosen[-1]), ("rejected", rejected[-1])):
        if not last["content"].strip():
            raise Bad(field, "empty final response")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def parse_ranking(row: Row) -> Ranking:
    d = row.data
    if "message_tree_id" in d or ("message_id" in d and "role" in d):
        raise Bad(None, "this looks like an OpenAssistant export; convert the file first with "
                        "`align data convert --from oasst FILE -o rankings.jsonl`")
    if "completions" not in d and "ranks" not in d:
        raise Bad(None, _no_shape(d, 'rankings: "prompt", "completions", "ranks"'))
    prompt = prompt_field(d)
    completions = d.get("completions")
    if not isinstance(completions, list):
        raise Bad("completions", "missing or not a list")
    if len(completions) < 2:
        raise Bad("completions", f"a ranking needs at least 2 completions, got {len(completions)}")
    texts = tuple(c if isinstance(c, str) else completion_field({"c": c}, "c", f"completions[{i}]")
                  for i, c in enumerate(completions))
    first: dict[str, int] = {}  # as for preferences: two equal completions leave nothing to prefer
    for i, text in enumerate(texts):
        if not text.strip():
            raise Bad(f"completions[{i}]", "empty")
        if text.strip() in first:
            raise Bad(f"completions[{i}]", f"identical to completions[{first[text.strip()]}]: no preference to learn")
        first[text.strip()] = i
    ranks = d.get("ranks")
    if not isinstance(ranks, list):
        raise Bad("ranks", "missing or not a list")
    if len(ranks) != len(texts):
        raise Bad("ranks", f"has {len(ranks)} entries for {len(texts)} completions")
    for i, rank in enumerate(ranks):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise Bad(f"ranks[{i}]", f"expected an integer >= 0, got {clip(repr(rank))}")
    if len(set(ranks)) < 2:
        raise Bad("ranks", "all completions tie: no preference to learn")
    return Ranking(prompt, texts, tuple(ranks), row.source)


def parse_prompt(row: Row) -> Prompt:
    d = row.data
    if "messages" in d:
        messages = messages_field(d, "messages")
        if messages[-1]["role"] == "assistant" and "reference" not in d:
            # a whole conversation: the prompt is all but the final answer, which is the reference
            messages, reference = messages[:-1], messages[-1]["content"]
            if not any(m["role"] == "user" and m["content"].strip() for m in messages):
                raise Bad("messages", "no non-empty user message before the final assistant turn")
            return Prompt(messages, reference, row.source)
        if not any(m["content"].strip() for m in messages):
            raise Bad("messages", "empty: every message has empty content")
    elif "prompt" in d:
        messages = prompt_field(d)
    else:
        raise Bad(None, _no_shape(d, 'prompts: "prompt" or "messages", optional "reference"'))
    reference = d.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise Bad("reference", f"expected a string, got {type(reference).__name__}")
    return Prompt(messages, reference, row.source)


PARSERS: dict[str, Callable[[Row], Any]] = {
    "instructions": parse_instruction,
    "preferences": parse_preference,
    "rankings": parse_ranking,
    "prompts": parse_prompt,
}


def _no_shape(d: dict[str, Any], expected: str) -> str:
    keys = clip(", ".join(clip(str(k), 40) for k in sorted(d, key=str)), 200)
    return f"no known shape; expected {expected}; found keys: {keys or '(none)'}"


def parse_rows(rows: list[Row], kind: str) -> tuple[list[Any], list[str]]:
    parse = PARSERS[kind]
    records, problems = [], []
    for row in rows:
        try:
            records.append(parse(row))
        except Bad as e:
            problems.append(f"{row.source}: {e}")
    return records, problems


def load_records(path: str | Path, kind: str) -> list[Any]:
    """Every record of `path` as `kind`, or a DataError listing every bad one."""
    rows, problems = read_rows(path)
    records, bad = parse_rows(rows, kind)
    problems += bad
    if problems:
        raise DataError(problems, total=len(rows) + len(problems) - len(bad))
    if not records:
        raise DataError([f"{path}: no records"])
    return records

