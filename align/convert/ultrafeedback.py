"""UltraFeedback (Cui et al. 2023, arXiv 2310.01377), in its two published layouts.

openbmb/UltraFeedback -> rankings. One row a prompt: `instruction`, and `completions`, four model
responses each with `response`, `overall_score` (the critique model's 1-10), `fine-grained_score`
(the mean of the four aspect ratings) and `annotations` {instruction_following, honesty,
truthfulness, helpfulness: {"Rating": "1".."5" or "N/A", ...}}. The completions are ranked by one
rating, higher better; equal ratings tie (equal ranks), and ties give no pair.

The default rating is `fine-grained`: the authors trained UltraRM on the averaged aspect ratings,
and Argilla's curation found the critique's `overall_score` at odds with its own rationale in
hundreds of rows (rated 10, critiqued as bad; fixed upstream in December 2023), so the
community's binarisations moved to the mean of the aspect ratings. `overall` (which
HuggingFaceH4/ultrafeedback_binarized uses) or a single aspect can be chosen instead (--rating).
The per-completion `custom_system_prompt` (the sampled principle) is not part of the prompt: it
differs between the four completions, and the binarised sets leave it out too.

HuggingFaceH4/ultrafeedback_binarized -> preferences. One row a pair: `prompt` (a string),
`chosen` and `rejected` (the whole conversation as [{"content", "role"}, ...], the user turn then
the assistant's), `score_chosen`, `score_rejected`. Its rejected reply is a random one of the other
three, so some rows tie (equal scores): a tie is no preference, and is skipped and listed.
"""

from __future__ import annotations

import math
from collections import Counter
from functools import partial
from typing import Any, Iterator

from align.convert.report import Report, convert_rows
from align.core.readers import Row
from align.core.record_fields import Bad, clip, messages_field

ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
RATINGS = ("fine-grained", "overall", *ASPECTS)  # the first is the default
SCORE_FIELD = {"fine-grained": "fine-grained_score", "overall": "overall_score"}


def _number(value: Any, where: str) -> float | None:
    """A rating: a number, a numeric string ("4", as the aspect ratings are published), or None for
    "N/A", null or NaN (not rated)."""
    if value is None or value == "N/A" or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise Bad(where, f"expected a number or \"N/A\", got {clip(repr(value))}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Bad(where, f"expected a number or \"N/A\", got {clip(repr(value))}")
    return float(value)


def completion_rating(completion: dict[str, Any], rating: str, where: str) -> float | None:
    """The completion's score under `rating` (one of RATINGS), or None when it has none."""
    if rating in SCORE_FIELD:
        return _number(completion.get(SCORE_FIELD[rating]), f"{where}.{SCORE_FIELD[rating]}")
    aspect = (completion.get("annotations") or {}).get(rating)
    return _number(aspect.get("Rating") if isinstance(aspect, dict) else None, f"{where}.annotations.{rating}.Rating")


def ultrafeedback_ranking(row: Row, report: Report, rating: str) -> dict[str, Any] | None:
    """One prompt's completions ranked by `rating`; None (counted or listed in the report) when no pair is left."""
    d = row.data
    if not isinstance(d.get("instruction"), str) or not d["instruction"].strip():
        raise Bad("instruction", "missing, empty or not a string")
    if not isinstance(d.get("completions"), list):
        raise Bad("completions", "missing or not a list")
    texts, scores, left_out = [], [], Counter()
    for i, completion in enumerate(d["completions"]):
        if not isinstance(completion, dict):
            raise Bad(f"completions[{i}]", "expected an object")
        text, score = completion.get("response"), completion_rating(completion, rating, f"completions[{i}]")
        if not isinstance(text, str) or not text.strip():
            left_out["completion with an empty or missing response"] += 1
        elif score is None:
            left_out[f"completion with no {rating} rating"] += 1
        else:
            texts.append(text)
            scores.append(round(score, 6))  # the published means are floats: 4.25, 3.6666666666666665
    report.skipped.update(left_out)  # counted only once the row is known to be well formed
    if len(texts) < 2:
        report.skip(row.source, f"fewer than 2 rated completions ({rating})")
    elif len({t.strip() for t in texts}) < len(texts):
        report.skip(row.source, "two completions with the same text")  # records.parse_ranking refuses them
    elif len(set(scores)) < 2:
        report.skip(row.source, f"all completions tie on {rating}: no pair")
    else:
        order = sorted(set(scores), reverse=True)
        return {"prompt": [{"role": "user", "content": d["instruction"]}], "completions": texts,
                "ranks": [order.index(s) for s in scores]}
    return None


def read_ultrafeedback(rows: list[Row], report: Report, options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One ranking a prompt of openbmb/UltraFeedback; options: rating (one of RATINGS)."""
    for ranking in convert_rows(rows, report, partial(ultrafeedback_ranking, report=report, rating=options["rating"])):
        if ranking is not None:
            report.pairs += sum(1 for a in ranking["ranks"] for b in ranking["ranks"] if a < b)
            yield ranking


def binarized_preference(row: Row) -> dict[str, Any]:
    d = row.data
    chosen, rejected = messages_field(d, "chosen"), messages_field(d, "rejected")
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if messages[-1]["role"] != "assistant":
            raise Bad(name, "does not end with an assistant turn")
        if not messages[-1]["content"].strip():
            raise Bad(name, "empty final assistant turn")
    if chosen[:-1] != rejected[:-1] or not chosen[:-1]:
        raise Bad("rejected", "chosen and rejected do not share the conversation before the final assistant turn")
    if chosen[-1]["content"].strip() == rejected[-1]["content"].strip():
        raise Bad("rejected", "identical to chosen")
    better, worse = (_number(d.get(f), f) for f in ("score_chosen", "score_rejected"))
    if better is not None and worse is not None:
        if better == worse:
            raise Bad("score_rejected", f"equals score_chosen ({better:g}): a tie, no preference")
        if better < worse:
            raise Bad("score_rejected", f"above score_chosen ({worse:g} > {better:g})")
    return {"prompt": list(chosen[:-1]), "chosen": [chosen[-1]], "rejected": [rejected[-1]]}


def read_ultrafeedback_binarized(rows: list[Row], report: Report, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Every convertible pair of HuggingFaceH4/ultrafeedback_binarized (no options)."""
    records = list(convert_rows(rows, report, binarized_preference))
    report.pairs += len(records)
    return records
