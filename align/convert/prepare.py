"""One published preference source -> every file a pipeline reads, with whole prompts held out.

    PrepareSpec   the source (a converter of align.convert), its files or data set, how many prompts to hold
                  out and to train on, the seed
    prepare(...)  writes into a directory:
        pairs.jsonl     the training prompts' preferences or rankings, as converted (reward, DPO, KTO, ORPO)
        sft.jsonl       each training prompt's best reply as a dialogue to imitate (SFT); an empty best reply
                        is no demonstration, so that prompt has none (counted)
        prompts.jsonl   the training prompts, each once (PPO, GRPO, RLOO)
        heldout.jsonl   the held-out prompts, each once, with the best reply as `reference` (evaluation)
        prepared.json   the settings, the counts, and the conversion's report (what was skipped and why)

A prompt's records all go to one side: a held-out prompt is never trained on by any stage, and a
pipeline's SFT, reward model and policy see the same training prompts.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from align.convert import converter, convert_records, write_jsonl
from align.core import rundir
from align.core.config import check
from align.core.errors import DataError
from align.core.input_paths import InputPath
from align.core.readers import Row
from align.core.records import Preference, parse_preference, parse_ranking

FILES = ("pairs.jsonl", "sft.jsonl", "prompts.jsonl", "heldout.jsonl")
PREPARED = "prepared.json"


@dataclass
class PrepareSpec:
    source: str | None = None
    """A converter's name, as `align data convert --from` takes it (hh-rlhf, oasst, ultrafeedback, ...); unset:
    no preparation, each stage reads the files its own config names."""
    files: list[InputPath] = field(default_factory=list)
    """The source's published files (plain or .gz), e.g. [harmless-base/train.jsonl.gz] of github.com/anthropics/hh-rlhf."""
    dataset: str | None = None
    """Instead of files: a data set `datasets.load_dataset` resolves (hub id, cached or online), e.g. Anthropic/hh-rlhf."""
    split: str = "train"
    """With dataset: its split."""
    data_dir: str | None = None
    """With dataset: load_dataset's data_dir (HH-RLHF: harmless-base, helpful-base, ...)."""
    options: dict[str, Any] = field(default_factory=dict)
    """The converter's own options, e.g. {drop_empty: true} for hh-rlhf, {lang: [en]} for oasst."""
    heldout_prompts: int = 64
    """Prompts held out for evaluation (PPO's in-loop evaluation and the eval stage)."""
    train_prompts: int = 0
    """Training prompts to keep after the held-out ones, drawn at random; 0 = all of them."""
    seed: int = 0
    """Draws the held-out and the training prompts."""

    def __post_init__(self):
        check(self.heldout_prompts >= 1, "heldout_prompts", "must be >= 1")
        check(self.train_prompts >= 0, "train_prompts", "must be >= 0 (0 = every prompt not held out)")
        if self.source is not None:
            converter(self.source)  # an unknown name fails while the config loads, naming the known ones
            check(bool(self.files) != bool(self.dataset), "files", "give the source's files, or a dataset, not both")
            check(converter(self.source).kind in ("preferences", "rankings"), "source",
                  f"{self.source} writes {converter(self.source).kind}; a pipeline needs preferences or rankings")


def prepare(spec: PrepareSpec, out_dir: str | Path) -> dict[str, Any]:
    """Convert the source and write FILES and PREPARED into out_dir; returns PREPARED's figures."""
    records, report = convert_records(spec.source, [str(f) for f in spec.files], spec.options, dataset=spec.dataset,
                                      split=spec.split if spec.dataset else None, data_dir=spec.data_dir)
    kind = converter(spec.source).kind
    parse = parse_preference if kind == "preferences" else parse_ranking
    by_prompt: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    for i, record in enumerate(records):
        parsed = parse(Row(f"{spec.source} record {i + 1}", record))
        by_prompt.setdefault(json.dumps(parsed.prompt, sort_keys=True), []).append((record, parsed))
    prompts = list(by_prompt)
    if len(prompts) <= spec.heldout_prompts:
        raise DataError([f"{spec.source}: {len(prompts)} distinct prompts, and heldout_prompts is "
                         f"{spec.heldout_prompts}: nothing would be left to train on"])
    random.Random(spec.seed).shuffle(prompts)
    heldout, train = prompts[:spec.heldout_prompts], prompts[spec.heldout_prompts:]
    if spec.train_prompts:
        train = train[:spec.train_prompts]

    demonstrations = [best_dialogue(by_prompt[key][0][1]) for key in train]
    files = {
        "pairs.jsonl": [record for key in train for record, _ in by_prompt[key]],
        "sft.jsonl": [{"messages": d} for d in demonstrations if d is not None],
        "prompts.jsonl": [{"prompt": list(by_prompt[key][0][1].prompt)} for key in train],
        "heldout.jsonl": [reference_prompt(by_prompt[key][0][1]) for key in heldout],
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        write_jsonl(out / name, rows)
    figures = {
        "settings": asdict(spec), "kind": kind, "conversion": report.summary(),
        "prompts": {"distinct": len(prompts), "train": len(train), "heldout": len(heldout)},
        "records": {name: len(rows) for name, rows in files.items()},
        "sft_left_out_empty_best_reply": sum(d is None for d in demonstrations),
    }
    rundir.write_json_atomic(out / PREPARED, figures)
    return figures


def best(parsed: Any) -> str:
    """The preferred reply: chosen, or a ranking's first completion of the best rank."""
    if isinstance(parsed, Preference):
        return parsed.chosen
    return parsed.completions[parsed.ranks.index(min(parsed.ranks))]


def best_dialogue(parsed: Any) -> list[dict[str, str]] | None:
    reply = best(parsed)
    return [*parsed.prompt, {"role": "assistant", "content": reply}] if reply.strip() else None


def reference_prompt(parsed: Any) -> dict[str, Any]:
    reply = best(parsed)
    return {"prompt": list(parsed.prompt), **({"reference": reply} if reply.strip() else {})}
