"""Errors caused by what the user gave us. The CLI prints them and exits 2, no traceback."""

from __future__ import annotations


class AlignError(Exception):
    """A problem with the user's input (config, data, paths) rather than a bug."""


class ConfigError(AlignError):
    """A config file or `--set` override that does not fit the stage's config dataclass."""


class DataError(AlignError):
    """One or more bad records. Each problem reads `FILE:LINE: field "x": reason`."""

    max_shown = 20

    def __init__(self, problems: list[str], total: int | None = None):
        self.problems = list(problems)
        self.total = total
        shown = self.problems[: self.max_shown]
        more = len(self.problems) - len(shown)
        lines = shown + ([f"... and {more} more problems"] if more > 0 else [])
        if total is not None:
            lines.append(f"{len(self.problems)} bad of {total} records")
        super().__init__("\n".join(lines))


class TrainingHalted(AlignError):
    """A health guard stopped training (non-finite loss, runaway KL, a constant reward), after saving
    a checkpoint; the message says what happened, at which step, and where the checkpoint is."""


class OutOfMemory(AlignError):
    """Training ran out of memory; the message names the settings that lower it."""


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM). A BaseException, like KeyboardInterrupt, so no
    library's `except Exception` swallows it on the way out."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def option(name: str) -> str:
    """A flag as both callers spell it, for messages the CLI and the Python API share:
    `--overwrite (overwrite=True)`."""
    return f"--{name} ({name.replace('-', '_')}=True)"
