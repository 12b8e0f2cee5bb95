"""The dependency direction of DESIGN.md, and a light `import align.core`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# package -> top-level names it must not import
FORBIDDEN = {
    "align/core": ("sft", "reward", "align.ppo", "align.eval", "align.pipeline", "align.cli", "align.prefs"),
    "sft": ("reward", "align.ppo", "align.eval", "align.pipeline", "align.cli"),
    "reward": ("sft", "align.ppo", "align.eval", "align.pipeline", "align.cli"),
    # the evaluation reads stages' outputs (reward.score loads a reward model), never their training code
    "align/eval": ("sft", "align.ppo", "align.prefs", "align.demo", "align.pipeline", "align.cli", "reward.train"),
}


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
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
        if path.name not in ("cli.py", "__main__.py"):
            assert "align.cli" not in imports_of(path), path


def test_importing_align_core_and_the_cli_loads_no_torch():
    code = "import sys, align.core.config, align.core.records, align.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
