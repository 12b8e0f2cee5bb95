"""Which directory a path in a config is read from.

- The files a config reads (data files, a pipeline's stage configs) are relative to the config file that
  names them, as compose files and Hydra resolve theirs: a config works from any current directory, and a
  preset names the demo data beside it.
- Paths given on the command line (`--config`, `--set`, options) are relative to the current directory.
- A stage's built-in defaults name the demo data that ships with align (align.core.presets).
- Run directories (out_dir, runs_dir, and the adapters and reward models a stage reads from earlier runs)
  are where runs are written: relative to the current directory, wherever they are named.

A field holds an input file when its type is `InputPath` (or a list or optional of it); the type is a plain
`str` to everything else (config.build, the docs), so the mark costs nothing where it is not read.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

InputPath = Annotated[str, "an input file: relative to the config file that names it"]

log = logging.getLogger(__name__)


def resolve_inputs(cls: type, data: dict[str, Any], base: Path, source: str) -> None:
    """Rewrite, in place, the relative input paths in `data` (the settings of `cls` as the file `source` gives
    them, dotted keys allowed) to paths from `base`, that file's directory."""
    hints = get_type_hints(cls, include_extras=True)
    for key in list(data):
        name, _, rest = str(key).partition(".")
        if name not in hints:
            continue  # build() names the unknown key
        if rest:
            nested = {rest: data[key]}
            inner = _nested_class(hints[name])
            if inner is not None:
                resolve_inputs(inner, nested, base, source)
                data[key] = nested[rest]
            continue
        data[key] = _resolve(hints[name], data[key], base, source, name)


def resolve_defaults(cls: type, data: dict[str, Any], base: Path) -> None:
    """Set in `data` each input path of `cls` that it leaves at its default, resolved from `base`."""
    hints = get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        hint, inner = hints[f.name], _nested_class(hints[f.name])
        if not f.init:
            continue
        if inner is not None and not _is_list(hint):
            given = data.get(f.name, {})
            if isinstance(given, dict):
                resolve_defaults(inner, given, base)
                if given:
                    data[f.name] = given
            continue
        if f.name in data or not (_marks_input(hint) or inner is not None):
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if isinstance(default, list) and default:
            data[f.name] = [dataclasses.asdict(item) if dataclasses.is_dataclass(item) else item for item in default]
        elif isinstance(default, str):
            data[f.name] = default
        else:
            continue
        data[f.name] = _resolve(hint, data[f.name], base, "defaults", f.name)


def _resolve(hint: Any, value: Any, base: Path, source: str, name: str) -> Any:
    if isinstance(value, str) and _marks_input(hint):
        return _from_file(base, value, source, name)
    if isinstance(value, list) and _is_list(hint):
        return [_resolve(get_args(_unoptional(hint))[0], item, base, source, f"{name}[{i}]") for i, item in enumerate(value)]
    inner = _nested_class(hint)
    if inner is not None:
        if isinstance(value, dict):
            resolve_inputs(inner, value, base, source)
        elif isinstance(value, str):  # the short form of a class whose first field is a path: `train: a.jsonl`
            first = dataclasses.fields(inner)[0].name
            if _marks_input(get_type_hints(inner, include_extras=True)[first]):
                return _from_file(base, value, source, name)
    return value


def _from_file(base: Path, value: str, source: str, name: str) -> str:
    path = _from(base, value)
    if value and not os.path.isabs(os.path.expanduser(value)) and not Path(path).exists() and Path(value).exists():
        # configs written before paths were the file's: read as before, for this release, and say so once
        log.warning("%s: %s: %s is relative to the config file now (%s), which does not exist; read from the "
                    "current directory for this release only: write it relative to the file, or give it with --set "
                    "(command-line paths are the current directory's)", source, name, value, path)
        return os.path.abspath(value)
    return path


def _from(base: Path, value: str) -> str:
    """`value` read from directory `base`, as an absolute path: the config that holds it (config.yaml, a
    `--print-config` output) then names the same file from anywhere. Empty and URL-like values are kept."""
    if not value or "://" in value:
        return value
    return os.path.normpath(os.path.join(os.path.abspath(base), os.path.expanduser(value)))


def _unoptional(hint: Any) -> Any:
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _marks_input(hint: Any) -> bool:
    hint = _unoptional(hint)
    return get_origin(hint) is Annotated and hint.__metadata__ == InputPath.__metadata__


def _is_list(hint: Any) -> bool:
    return get_origin(_unoptional(hint)) is list


def _nested_class(hint: Any) -> type | None:
    """The config class a field holds (itself, or as its list's items), else None."""
    hint = _unoptional(hint)
    if _is_list(hint):
        hint = get_args(hint)[0]
    return hint if dataclasses.is_dataclass(hint) else None
