"""The presets (configs/) and the demo data (data/demo/) that ship with align.

In a checkout they are the repository's top-level configs/ and data/; an installed wheel holds the same two
folders under align/presets/ (pyproject.toml maps them there). The relative layout is the same in both, so a
preset's paths to the demo data, relative to the preset (align.core.input_paths), hold in either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from align.core.errors import ConfigError


def share_root() -> Path:
    """The folder holding configs/ and data/: align/presets/ when installed, the repository in a checkout."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "presets"
    return installed if (installed / "configs").is_dir() else package.parent


def demo_data() -> Path:
    return share_root() / "data" / "demo"


@dataclass(frozen=True)
class Preset:
    group: str
    """The command it is for: a stage, `pipeline` (align run) or `accelerate` (accelerate launch)."""
    name: str
    path: Path

    @property
    def full_name(self) -> str:
        return f"{self.group}/{self.name}"

    @property
    def purpose(self) -> str:
        """The first sentence of the file's opening comment."""
        words = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#") or line.startswith("#  "):
                break  # the comment ends, or its example command lines begin
            words.append(line.lstrip("#").strip())
        text = " ".join(words)
        return re.split(r"(?<=\.)\s", text, maxsplit=1)[0].rstrip(".")


def presets(group: str | None = None) -> list[Preset]:
    """Every shipped preset (of one group), sorted by group and name."""
    root = share_root() / "configs"
    found = [Preset(path.parent.name, path.stem, path) for path in sorted(root.glob("*/*.yaml"))]
    return [p for p in found if group is None or p.group == group]


def find_preset(name: str, group: str | None = None) -> Preset | None:
    """The preset `name` of `group`, or `group/name` (a path ending so, configs/sft/smollm2-demo.yaml, also does)."""
    path = Path(name)
    wanted = path.parent.name or group
    matches = [p for p in presets(wanted) if p.name == path.name.removesuffix(".yaml")]
    return matches[0] if len(matches) == 1 else None


def config_file(value: str | Path, group: str, base: Path | None = None) -> Path:
    """What a config argument names: a file (relative to `base`, the directory of the file that names it, or
    the current directory), else a preset of `group` by name (`smollm2-demo`, or `sft/smollm2-demo`)."""
    path = Path(value)
    if base is not None and not path.is_absolute():
        path = base / path
    if path.is_file() or path.is_dir():
        return path
    preset = find_preset(str(value), group)
    if preset is not None:
        return preset.path
    known = ", ".join(p.name for p in presets(group)) or "none"
    where = f" (relative to {base})" if base is not None and not Path(value).is_absolute() else ""
    raise ConfigError(f"{value}: config file not found{where}, and no {group} preset of that name "
                      f"(presets: {known}; `align configs list` shows them all)")
