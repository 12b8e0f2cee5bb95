"""PKU-SafeRLHF (PKU-Alignment/PKU-SafeRLHF; Ji et al. 2023, arXiv 2307.04657) -> preferences.

One row a prompt and two responses: `prompt`, `response_0`, `response_1`, and two judgements of
the same pair, `better_response_id` (more helpful) and `safer_response_id` (more harmless), each 0
or 1, beside `is_response_0_safe` and `is_response_1_safe`. Safe RLHF trains its reward model on
the first and its cost model on the second; we write one axis a file (`axis`, --axis better|safer,
default better). The safety labels are not used: a pair of two unsafe (or two safe) responses still
says which one is safer.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from align.convert.report import Report, convert_rows
from align.core.readers import Row
from align.core.record_fields import Bad, clip

AXES = ("better", "safer")  # the first is the default


def pku_preference(row: Row, axis: str) -> dict[str, Any]:
    d = row.data
    for name in ("prompt", "response_0", "response_1"):
        if not isinstance(d.get(name), str):
            raise Bad(name, "missing or not a string")
        if not d[name].strip():
            raise Bad(name, "empty")
    field = f"{axis}_response_id"
    choice = d.get(field)
    if isinstance(choice, bool) or choice not in (0, 1):
        raise Bad(field, f"expected 0 or 1, got {clip(repr(choice))}")
    if d["response_0"].strip() == d["response_1"].strip():
        raise Bad("response_1", "identical to response_0")
    chosen, rejected = d[f"response_{int(choice)}"], d[f"response_{1 - int(choice)}"]
    return {"prompt": [{"role": "user", "content": d["prompt"]}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def read_pku_saferlhf(rows: list[Row], report: Report, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Every convertible pair; options: axis (better or safer)."""
    records = list(convert_rows(rows, report, partial(pku_preference, axis=options["axis"])))
    report.pairs += len(records)
    return records
