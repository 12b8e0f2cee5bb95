"""`align configs copy`: an editable copy of a shipped preset that reads the same files from anywhere."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from align.core.config import read_yaml_mapping
from align.core.errors import ConfigError
from align.core.input_paths import resolve_inputs
from align.core.presets import Preset, find_preset, presets
from align.stages import STAGES


def copy_preset(name: str, dest: str | Path) -> tuple[Preset, Path]:
    """Write an editable copy of the preset `name` (`sft/smollm2-demo`, or a name unique over all groups) to
    `dest` (a file, or a directory to hold `<name>.yaml`). Its relative paths to files are rewritten to where
    they lead from the preset, so the copy reads the same files from anywhere; comments and order are kept.
    An existing file is never replaced."""
    preset = find_preset(name)
    if preset is None:
        matches = [p.full_name for p in presets() if p.name == Path(name).name.removesuffix(".yaml")]
        hint = f"name one of {', '.join(matches)}" if matches else "`align configs list` shows them"
        raise ConfigError(f"{name}: no such preset ({hint})")
    into_dir = str(dest).endswith(("/", "\\"))  # Path() drops the trailing separator
    dest = Path(dest)
    if into_dir or dest.is_dir():
        dest = dest / preset.path.name
    if dest.exists():
        raise ConfigError(f"{dest}: already exists; name another file (a copy never replaces one)")
    text = preset.path.read_text(encoding="utf-8")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(_repointed(preset, text), encoding="utf-8")
    return preset, dest


def _repointed(preset: Preset, text: str) -> str:
    """The preset's text with each relative input path replaced by the absolute path it names, read as the
    stage or `align run` reads them; a stage config named by its preset's name keeps the name."""
    if preset.group not in STAGES and preset.group != "pipeline":
        return text  # accelerate's launch configs name no files of ours
    lines: dict[str, str] = {}
    data = read_yaml_mapping(preset.path, lines)
    resolved = copy.deepcopy(data)
    if preset.group == "pipeline":
        from align.pipeline import resolve_file_paths

        resolve_file_paths(resolved, preset.path)
    else:
        resolve_inputs(STAGES[preset.group].config_class(), resolved, preset.path.parent, str(preset.path))
    out = text.splitlines(keepends=True)
    for key, old, new in _changed(data, resolved):
        if key.endswith(".config") and not (preset.path.parent / old).exists():
            continue  # a preset's name, which works from anywhere
        line = int(lines[key].rpartition(":")[2]) - 1
        out[line] = out[line].replace(old, str(Path(new).resolve()), 1)
    return "".join(out)


def _changed(before: Any, after: Any, key: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, old, new) for every string leaf that differs between two parallel YAML trees."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [c for k in before for c in _changed(before[k], after.get(k), f"{key}.{k}" if key else str(k))]
    if isinstance(before, list) and isinstance(after, list):
        return [c for i, (b, a) in enumerate(zip(before, after)) for c in _changed(b, a, f"{key}[{i}]")]
    return [(key, before, after)] if isinstance(before, str) and isinstance(after, str) and before != after else []
