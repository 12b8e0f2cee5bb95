"""User-supplied Python callables named `module:function` (rule-based rewards, judges)."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from align.core.errors import AlignError


def load_callable(spec: str) -> Callable[..., Any]:
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise AlignError(f"{spec!r}: expected module:function, e.g. align.demo.tasks:judge")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise AlignError(f"{spec!r}: cannot import module {module_name!r}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise AlignError(f"{spec!r}: module {module_name!r} has no function {name!r}")
    return fn
