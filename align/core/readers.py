"""Data files -> rows: one reader a file type, every row named FILE:LINE (or FILE: row N for tables).

Records are read from JSONL (plain or gzip), JSON (an array, or JSONL under a .json name as many hubs
ship it), CSV, parquet, or a directory saved by `datasets.save_to_disk`. A reader never stops at the
first bad line: it returns the rows it read and a problem for each line it could not (malformed JSON,
not UTF-8, not an object, too big). What a row holds is checked by `align.core.records`.

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
from typing import Any

from align.core.errors import DataError
from align.core.record_fields import clip

# a long document in one cell is data, not an error: lift csv's 128 KiB default limit
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
MAX_RECORD_MB = 8.0  # default of ALIGN_MAX_RECORD_MB; megabytes of 10**6 bytes


@dataclass(frozen=True)
class Row:
    source: str  # "FILE:LINE" (or "FILE: row N" for tables)
    data: dict[str, Any]


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
