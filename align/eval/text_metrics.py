"""Text metrics of the answers against the prompts' references, through `evaluate`.

align's own modules (`rouge`: ROUGE-1/2/L per answer, `bleu`: corpus BLEU; align/eval/metric_modules) ship
with the package and load offline, where `evaluate.load("rouge")` would fetch the hub's script. Any other
id `evaluate` can resolve (its cache, the hub when online, a path to a metric script) works as well; one
that cannot load is reported unavailable in one line and left out, and the evaluation goes on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from align.core.model_paths import first_line

log = logging.getLogger(__name__)

MODULES = Path(__file__).parent / "metric_modules"
BUILT_IN = {"rouge": "align_rouge.py", "bleu": "align_bleu.py"}


@functools.cache
def load(name: str) -> Any:
    """The metric's evaluate module, or the one line saying why it cannot load here, warned once (each metric is
    tried once a process: the evaluation computes its metrics row by row)."""
    import evaluate

    source = str(MODULES / BUILT_IN[name]) if name in BUILT_IN else name
    try:
        return evaluate.load(source)
    except Exception as e:  # evaluate raises whatever its fetch or import raised
        message = f"text metric {name!r} is unavailable here, left out ({type(e).__name__}: {first_line(e)})"
        log.warning(message)
        return message


def compute(names: Sequence[str], predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """{figure: per-answer list or one number}: a built-in module's keys as they are (`rouge1`, `bleu`), another
    metric's as `<name>` or `<name>_<key>` (name: the id, or a script's file name without `.py`). A metric that
    cannot load is warned about once and left out."""
    out: dict[str, Any] = {}
    for name in names:
        module = load(name)
        if isinstance(module, str):  # unavailable here
            continue
        short = Path(name).stem if name.endswith(".py") else name.rstrip("/").split("/")[-1]  # a path's, an org/id's
        for key, value in module.compute(predictions=list(predictions), references=list(references)).items():
            figure = key if name in BUILT_IN or key == short else f"{short}_{key}"
            if isinstance(value, (int, float)) or (isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)):
                out[figure] = [float(v) for v in value] if isinstance(value, list) else float(value)
    return out
