"""The CLI's exit codes and the errors that carry them (each one `error:` line from :func:`engine.cli.main`)."""

from __future__ import annotations

from engine.config import SettingsError

__all__ = ["EXIT_INTERRUPTED", "EXIT_OK", "EXIT_RUNTIME", "EXIT_USAGE", "PROG", "CliError", "Interrupted",
           "UsageError", "one_line"]

PROG = "python -m engine"

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CliError(Exception):
    """An error the CLI reports as one line and an exit code."""

    code = EXIT_RUNTIME

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class UsageError(CliError):
    """A usage problem found before any model loads (exit 2)."""

    code = EXIT_USAGE


class Interrupted(CliError):
    """Ctrl-C, with a message saying what was left behind (exit 130)."""

    code = EXIT_INTERRUPTED


def one_line(exc: BaseException) -> str:
    """The first line of an error's message; the class name too unless it is one of ours or a ``ValueError``."""
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    name = type(exc).__name__
    if isinstance(exc, (ValueError, SettingsError, CliError)) and msg:
        return msg
    return f"{name}: {msg}" if msg else name
