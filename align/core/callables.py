"""User-supplied Python callables named `module:function` (rule-based rewards, judges)."""

from __future__ import annotations

import importlib
import numbers
import os
import sys
from typing import Any, Callable

from align.core.errors import AlignError


class RewardFunctionError(AlignError):
    """A user's reward function raised, or returned something other than one number."""


def load_callable(spec: str) -> Callable[..., Any]:
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise AlignError(f"{spec!r}: expected module:function, e.g. align.demo.tasks:judge")
    try:
        module = import_from_cwd_too(module_name)
    except ImportError as e:
        raise AlignError(f"{spec!r}: cannot import module {module_name!r}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise AlignError(f"{spec!r}: module {module_name!r} has no function {name!r}")
    return fn


def import_from_cwd_too(module_name: str) -> Any:
    """Import a module, also from the working directory. `python -m align` has it on sys.path, the
    `align` console script does not; it goes last, so a user's file never shadows an installed package."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        top = module_name.partition(".")[0]
        cwd = os.getcwd()
        if e.name != top or cwd in sys.path or "" in sys.path:
            raise
    sys.path.append(cwd)
    try:
        return importlib.import_module(module_name)
    except ImportError:
        sys.path.remove(cwd)
        raise


def reward_value(fn: Callable[[str, str], Any], spec: str, prompt: str, response: str) -> float:
    """fn(prompt, response) as a float. A raise, or a value that is not one number, becomes a
    RewardFunctionError that names the function and the response it was scoring."""
    try:
        value = fn(prompt, response)
    except Exception as e:  # the user's code: anything it raises is theirs to fix
        text = str(e).strip()
        problem = f"raised {type(e).__name__}" + (f": {text.splitlines()[0][:200]}" if text else "")
    else:
        number = as_number(value)
        if number is not None:
            return number
        problem = "returned None, not a number" if value is None else f"returned {what(value)}, not one number"
    raise RewardFunctionError(f"reward function {spec}: {problem}, scoring the response {shown(response)}")


def as_number(value: Any) -> float | None:
    """int, float, bool, a numpy or torch scalar, or a one-element tensor or array; else None."""
    if isinstance(value, numbers.Real):  # bool, int, float, numpy scalars
        return float(value)
    size = getattr(value, "size", None)  # numpy: an int; torch: a method
    count = value.numel() if hasattr(value, "numel") else size
    if count == 1 and hasattr(value, "item"):
        item = value.item()
        if isinstance(item, numbers.Real):
            return float(item)
    return None


def what(value: Any) -> str:
    name = type(value).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    if hasattr(value, "shape") and hasattr(value, "item"):
        return f"{article} {name} of shape {tuple(value.shape)}"
    if isinstance(value, (str, bytes)):
        return f"{article} {name} ({shown(value)})"
    return f"{article} {name}"


def shown(text: str | bytes, limit: int = 80) -> str:
    """repr(text) on one line, cut to `limit` characters with the full length said."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"
