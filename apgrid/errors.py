"""apgrid's one error base. Every error a user can cause or fix carries its exit code and a
one-line message; the command line prints the line and exits with the code, never a traceback."""

from __future__ import annotations


class ApgridError(Exception):
    """Bad input or environment, said in one line; nothing was started or written (exit 2)."""

    exit_code = 2


def show_value(value, limit: int = 60) -> str:
    """A value as a one-line message shows it: quoted when text, escapes visible, cut when long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_reason(exc: BaseException | str, limit: int = 160) -> str:
    """The first line of an exception's message, cut to `limit` characters (its type if empty)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
