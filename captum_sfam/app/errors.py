r"""The command line's one error, and how it words other errors in one line.

Every ``captum-sfam`` subcommand reports a :class:`CLIError` as one line on
stderr with exit code 2.
"""

from __future__ import annotations

from typing import Sequence


class CLIError(Exception):
    """An error the command line reports in one line (exit code 2)."""


def one_line(error: BaseException) -> str:
    """``"TypeName: first line of the message"`` (the type alone if empty)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def shorten(names: Sequence[str], limit: int = 6) -> str:
    """The first ``limit`` names, comma-separated, and how many more there are."""
    names = list(names)
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names) - limit} more)"
    return shown


__all__ = ["CLIError", "one_line", "shorten"]
