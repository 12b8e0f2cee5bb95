"""The `align` command: one thin command per stage over the Python API.

Heavy imports (torch, transformers, trl) happen inside commands, so `align --help` is instant.
Errors caused by input (AlignError) print one message and exit 2, with no traceback.
"""

from __future__ import annotations

from align.cli.app import cli
from align.core import malloc
# each module registers its commands on `cli` as it is imported
from align.cli.data import data  # noqa: F401
from align.cli.runs import run  # noqa: F401
from align.cli.stages import reward  # noqa: F401
from align.cli.tools import configs  # noqa: F401

__all__ = ["cli", "main"]


def main() -> None:
    malloc.reexec()  # on a CPU machine, tbbmalloc: a step's large buffers reused, not faulted in afresh
    cli(prog_name="align")
