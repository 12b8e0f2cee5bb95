"""A resolved config as YAML with each setting's docstring above it as a comment (`align STAGE --print-config`):
the field documentation, which lives in the config dataclasses, where a user reads the settings. Fed back
as --config it gives the same config.

    field_docstrings   the string literal under each annotated field of a dataclass's own body
    documented_yaml    the config, nested, each key preceded by its field's docstring
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from typing import Any

import yaml


def field_docstrings(cls: type) -> dict[str, str]:
    """The string literal right under each annotated field in `cls`'s own body (as the source reads)."""
    try:
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    except (OSError, TypeError):
        return {}
    return {stmt.target.id: after.value.value for stmt, after in zip(body, body[1:])
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)}


def _docs(cls: type) -> dict[str, str]:
    """Every field's docstring, a subclass's own over its bases'."""
    out: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            out.update(field_docstrings(base))
    return out


def _comment(text: str, indent: str) -> list[str]:
    lines = textwrap.wrap(" ".join(text.split()), width=100 - len(indent) - 2)
    return [f"{indent}# {line}" for line in lines]


def _scalar(value: Any) -> str:
    """A value on one line as YAML reads it back (flow style for lists and mappings)."""
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**9).strip().removesuffix("\n...")


def documented_yaml(config: Any, indent: str = "") -> str:
    lines: list[str] = []
    docs = _docs(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in docs:
            lines += _comment(docs[f.name], indent)
        if dataclasses.is_dataclass(value):
            lines.append(f"{indent}{f.name}:")
            lines.append(documented_yaml(value, indent + "  ").rstrip("\n"))
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            lines.append(f"{indent}{f.name}: {_scalar([dataclasses.asdict(v) for v in value])}")
        else:
            lines.append(f"{indent}{f.name}: {_scalar(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)}")
    return "\n".join(lines) + "\n"
