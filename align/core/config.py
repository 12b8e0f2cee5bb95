"""Typed configs: defaults in dataclasses, then a YAML file, then `--set a.b=v` overrides.

Every stage's config is a tree of dataclasses. `load_config` builds one from plain data and
checks each value against the field's type, so a typo or a wrong type is an error that names
the key and where it came from, never a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from align.core.errors import ConfigError
from align.core.input_paths import resolve_defaults, resolve_inputs
from align.core.presets import share_root

T = TypeVar("T")
log = logging.getLogger(__name__)


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> T:
    """Defaults of `cls`, updated by the YAML file at `path`, then by `key.sub=value` overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    lines: dict[str, str] = {}
    if path is not None:
        source = str(path)
        data = read_config_file(cls, Path(path), lines)
    for item in overrides:
        key, value = parse_override(item)
        (key, value), = rename_old_keys(cls, {key: value}, "--set", dotted=True).items()
        set_dotted(data, key, value)
        # a key the command line set is no longer the file's: its line would mislead
        lines = {k: v for k, v in lines.items() if not (k == key or k.startswith(f"{key}.") or k.startswith(f"{key}["))}
    if overrides:
        source = f"{source} + --set"
    resolve_defaults(cls, data, share_root())
    return build(cls, data, source, lines=lines)


def read_config_file(cls: type, path: Path, lines: dict[str, str] | None = None) -> dict[str, Any]:
    """The settings of `cls` that a YAML file gives, in this release's names (rename_old_keys), its input paths
    read from the file's directory (align.core.input_paths); `lines` as read_yaml_mapping fills it."""
    data = rename_old_keys(cls, read_yaml_mapping(path, lines), str(path), lines=lines)
    resolve_inputs(cls, data, path.parent, str(path))
    return data


def read_yaml_mapping(path: Path, lines: dict[str, str] | None = None) -> dict[str, Any]:
    """The settings in a YAML file; `lines`, when given, is filled with dotted key -> "FILE:LINE"."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a config file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
        data = load_yaml(text)
    except DuplicateKey as e:
        raise ConfigError(f"{path}:{e.line}: duplicate key {e.key!r} (first at line {e.first})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid YAML: not UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    if data is None:
        # an empty file is far more often a save gone wrong than a wish for every default
        raise ConfigError(f"{path}: holds no settings; leave out --config to run with the defaults")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping of settings at the top level, got {type(data).__name__}")
    if lines is not None:
        _key_lines(yaml.compose(text), "", str(path), lines)
    return data


class DuplicateKey(yaml.YAMLError):
    """A key given twice in one mapping; lines count from 1."""

    def __init__(self, key: Any, line: int, first: int):
        self.key, self.line, self.first = key, line, first
        super().__init__(f"line {line}: duplicate key {key!r} (first at line {first})")


class ConfigLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a key repeated in one mapping: PyYAML keeps the last
    silently, so a second `training:` block would drop the first without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            # `<<: *base` merges a mapping whose keys this one may override; a list as key is not hashable
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in first:
                raise DuplicateKey(key, line, first[key])
            first[key] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """yaml.safe_load, refusing repeated keys (ConfigLoader is a SafeLoader: no Python objects)."""
    loader = ConfigLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _key_lines(node: Any, prefix: str, path: str, out: dict[str, str]) -> None:
    """Dotted key (as build() names it) -> "FILE:LINE" for every key in a composed YAML tree."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                name = f"{prefix}.{key.value}" if prefix else str(key.value)
                out[name] = f"{path}:{key.start_mark.line + 1}"
                _key_lines(value, name, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            name = f"{prefix}[{i}]"
            out[name] = f"{path}:{item.start_mark.line + 1}"
            _key_lines(item, name, path, out)


def rename_old_keys(cls: type, data: dict[str, Any], source: str, dotted: bool = False,
                    lines: dict[str, str] | None = None, notify: bool = True) -> dict[str, Any]:
    """`data` with the settings that `cls.RENAMED` lists under an old name moved to the new one, and a one-line
    notice for each (old names are accepted for one release). `dotted`: `data` is a `set:` mapping of dotted
    keys (`ppo.updates: 4`), which stay dotted; otherwise it is nested as a YAML file gives it. `lines` (key ->
    FILE:LINE) learns the new names, so an error under one still points at its line."""
    def moved(key: str, to: str) -> None:
        if notify:
            log.warning("%s: %r is now %r (the old name works in this release only)", source, key, to)
        for name, line in list((lines or {}).items()):
            if name == key or name.startswith((f"{key}.", f"{key}[")):
                lines[f"{to}{name[len(key):]}"] = line

    for old, new in getattr(cls, "RENAMED", {}).items():
        head, _, rest = old.partition(".")
        for key in [k for k in data if k == old or str(k).startswith(f"{old}.")]:
            to = f"{new}{key[len(old):]}"
            moved(key, to)
            value = data.pop(key)
            if dotted or "." not in to:
                data[to] = {**data[to], **value} if isinstance(data.get(to), dict) and isinstance(value, dict) else value
            else:
                set_dotted(data, to, value)
        if rest and isinstance(data.get(head), dict) and rest in data[head]:  # `training: {temperature: 1}`
            moved(old, new)
            set_dotted(data, new, data[head].pop(rest))
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """`training.learning_rate=1e-4` -> ("training.learning_rate", 1e-4); values are YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set training.learning_rate=1e-4")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except DuplicateKey as e:
        raise ConfigError(f"--set {item!r}: duplicate key {e.key!r}") from None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def build(cls: type[T], data: Any, source: str, prefix: str = "", lines: dict[str, str] | None = None) -> T:
    """Construct dataclass `cls` from a mapping, checking every key and type.

    `lines` maps dotted keys to "FILE:LINE" (see read_yaml_mapping), so errors point at the line."""
    lines = lines or {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        name = prefix.rstrip(".") or "config"
        raise ConfigError(f"{lines.get(name, source)}: {name}: expected a mapping, got {_show(data)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{lines.get(name, source)}: unknown key {name!r}{did_you_mean(key, fields, prefix)} "
                              f"(known here: {known})")
        kwargs[key] = _coerce(hints[key], value, source, name, lines)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        field = qualify(prefix, getattr(e, "field", None) or prefix.rstrip(".") or "config")
        reason = getattr(e, "reason", str(e))
        raise ConfigError(f"{lines.get(field, source)}: {field}: {reason}") from None
    except TypeError as e:
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'}: {e}") from None


# what one stage calls a setting another stage names otherwise: offered when the other name is given
OTHER_NAMES = {"ppo": ("training",), "sampling": ("generation",), "save_every": ("save_steps",),
               "eval_every": ("eval_steps",), "sample_every": ("sample_steps",), "max_steps": ("epochs", "updates"),
               "updates": ("max_steps", "epochs")}


def did_you_mean(key: str, known: typing.Iterable[str], prefix: str = "") -> str:
    """` (did you mean 'x'?)` for the known keys spelled like `key` or naming what it names elsewhere; "" if none."""
    import difflib

    known = list(known)
    close = [k for k in OTHER_NAMES.get(key, ()) if k in known] or difflib.get_close_matches(key, known, n=2, cutoff=0.75)
    return f" (did you mean {' or '.join(repr(prefix + k) for k in close)}?)" if close else ""


def qualify(prefix: str, field: str) -> str:
    """The full dotted name of a field a `check` named from inside a nested config.

    Checks name fields as a reader of the YAML would (`training.batch_size`, or `lora.r` inside
    model.lora): the components they share with the end of the prefix are not repeated."""
    outer = [p for p in prefix.rstrip(".").split(".") if p]
    inner = field.split(".")
    for k in range(min(len(outer), len(inner)), 0, -1):
        if outer[-k:] == inner[:k]:
            return ".".join(outer[:-k] + inner)
    return ".".join(outer + inner)


def _coerce(tp: Any, value: Any, source: str, name: str, lines: dict[str, str] | None = None) -> Any:
    if lines and name in lines:
        return _coerce_at(tp, value, source, lines[name], name, lines)
    return _coerce_at(tp, value, source, source, name, lines)


def _coerce_at(tp: Any, value: Any, source: str, where: str, name: str, lines: dict[str, str] | None) -> Any:
    """`source` is the config's origin (passed down); `where` is this key's FILE:LINE when known."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, source, name, lines)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {name}: {_show(value)} fits none of {tp}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {name}: {_show(value)} is not one of {', '.join(map(repr, choices))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            # a bare path fills the dataclass's first field when that is a path: `train: a.jsonl` means
            # `train: {path: a.jsonl}`; `training: 5` is a mistake, not 5 epochs
            first = dataclasses.fields(tp)[0].name
            if not isinstance(value, str) or str not in (get_type_hints(tp)[first], *get_args(get_type_hints(tp)[first])):
                raise ConfigError(f"{where}: {name}: expected a mapping of settings, got {_show(value)}")
            value = {first: value}
        return build(tp, value, source, prefix=f"{name}.", lines=lines)
    if origin in (list, tuple):
        (item_tp, *_) = get_args(tp) or (Any,)
        items = value if isinstance(value, list) else [value]
        out = [_coerce(item_tp, v, source, f"{name}[{i}]", lines) for i, v in enumerate(items)]
        return out if origin is list else tuple(out)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {name}: expected a mapping, got {_show(value)}")
        _, val_tp = get_args(tp) or (Any, Any)
        return {str(k): _coerce(val_tp, v, source, f"{name}.{k}", lines) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {name}: expected true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: {name}: expected an integer, got {_show(value)}")
    if tp is float:
        return _finite_number(value, where, name)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: {name}: expected a string, got {_show(value)}")
    raise ConfigError(f"{where}: {name}: unsupported config type {tp}")


def _finite_number(value: Any, where: str, name: str) -> float:
    number = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)  # a string too: YAML 1.1 reads `1e-4` (no dot) as one
        except ValueError:
            pass
        except OverflowError:  # an integer beyond any float
            number = math.inf
    if number is None:
        raise ConfigError(f"{where}: {name}: expected a number, got {_show(value)}")
    if not math.isfinite(number):
        # `.inf`, `.nan`, `--set x=inf`: every `check(x > 0)` lets inf through, and training turns it into NaN weights
        raise ConfigError(f"{where}: {name}: must be a finite number, got {number}")
    return number


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


def check(condition: bool, field: str, message: str) -> None:
    """For `__post_init__`: raise a ConfigError naming the field."""
    if not condition:
        error = ConfigError(f"{field}: {message}")
        error.field, error.reason = field, message  # build() prefixes the field with where it sits
        raise error


def as_of_now(cls: type, saved: dict[str, Any]) -> dict[str, Any]:
    """A config.yaml written by an earlier release, in this release's terms: old names moved (RENAMED),
    relative input paths made absolute from the current directory (as they were read then), and settings
    added since at their defaults (which is what that run did). A finished run is then compared with a new
    config by what it ran with, not by how that was spelled."""
    data = rename_old_keys(cls, dict(saved), "config.yaml", notify=False)
    resolve_inputs(cls, data, Path.cwd(), "config.yaml")
    try:
        return to_dict(build(cls, data, "config.yaml"))
    except ConfigError:  # not a config of this class (or of a later release): compared as written
        return data


def changed_settings(before: Any, now: Any) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (before, now) for every setting that differs between two config trees."""
    flat_before, flat_now = _flat(before), _flat(now)
    return {k: (flat_before.get(k), flat_now.get(k)) for k in sorted(set(flat_before) | set(flat_now))
            if flat_before.get(k) != flat_now.get(k)}


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """The first changed key in words: `training.learning_rate: 0.001 then, 0.002 now, and 2 more`."""
    key, (before, now) = next(iter(changes.items()))
    more = f", and {len(changes) - 1} more" if len(changes) > 1 else ""
    return f"{key}: {before!r} then, {now!r} now{more}"


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}
