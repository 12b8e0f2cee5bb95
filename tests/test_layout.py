"""The dependency direction of DESIGN.md, and a light `import align.core`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# package -> modules it must not import (reward/ and sft/ install as align.reward and align.sft)
FORBIDDEN = {
    "align/core": ("align.sft", "align.reward", "align.ppo", "align.eval", "align.pipeline", "align.cli", "align.prefs",
                   "align.stages", "align.convert"),
    # the converters turn public data into ours for any stage, so they import no stage either
    "align/convert": ("align.sft", "align.reward", "align.ppo", "align.eval", "align.pipeline", "align.cli", "align.prefs",
                      "align.stages"),
    "sft": ("align.reward", "align.ppo", "align.eval", "align.pipeline", "align.cli"),
    "reward": ("align.sft", "align.ppo", "align.eval", "align.pipeline", "align.cli"),
    # the evaluation reads stages' outputs (reward.score loads a reward model), never their training code
    "align/eval": ("align.sft", "align.ppo", "align.prefs", "align.demo", "align.pipeline", "align.cli", "align.reward.train"),
}


def imports_of(path: Path, *, with_names: bool = False) -> set[str]:
    """The modules a file imports, inside functions too; `with_names`: also `module.name` of each
    `from module import name` (a submodule, when it is one)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if with_names:
                names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_dependency_direction():
    bad = []
    for package, forbidden in FORBIDDEN.items():
        for path in (ROOT / package).rglob("*.py"):
            for name in imports_of(path):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, bad


def test_nothing_imports_the_cli():
    for path in list((ROOT / "align").rglob("*.py")) + list((ROOT / "sft").rglob("*.py")):
        if path.parent.name != "cli" and path.name != "__main__.py":
            assert not any(name == "align.cli" or name.startswith("align.cli.") for name in imports_of(path)), path


def test_importing_align_core_and_the_cli_loads_no_torch():
    code = "import sys, align.core.config, align.core.records, align.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycle():
    """The project's modules import each other in one direction, counting the imports inside functions
    (pipeline and api once imported each other that way)."""
    sources = [p for d in ("align", "sft", "reward") for p in (ROOT / d).rglob("*.py")]
    modules = {module_of(p): p for p in sources}

    graph = {name: {m for m in imports_of(path, with_names=True) if m in modules} for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for other in graph[name]:
            if state.get(other) == "open":
                raise AssertionError(" -> ".join(trail[trail.index(other):] + [name, other]))
            if other not in state:
                visit(other, trail + [name])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [])


def test_every_registered_stage_has_a_command_and_an_api_function():
    import align
    from align.cli import cli
    from align.stages import STAGES

    assert set(STAGES) <= set(cli.commands)
    for stage in STAGES.values():
        assert getattr(align, stage.api_name) is stage.train(), stage.name
        assert cli.commands[stage.name].help.startswith(stage.summary.split(":")[0])
