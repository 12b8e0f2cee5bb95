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
