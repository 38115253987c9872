"""User-facing errors. The CLI prints them as one line with a hint and exits with the error's
``exit_code``: 1 for a failed input or run, 2 for a usage error (:class:`ConfigError`)."""

from __future__ import annotations

from typing import Any

# The longest value an error message repeats: a 10 MB line of stdin is named, not echoed.
SHOWN_CHARS = 120


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (saying how long it was)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message as part of a one-line error: its first line (cut to ``limit``
    characters), or its type's name when it says nothing."""
    lines = str(e).strip().splitlines()
    return lines[0][:limit] if lines else type(e).__name__


class JsaectlError(Exception):
    """An error the user can act on: what went wrong, and what to do next."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class StoreError(JsaectlError):
    """A store is missing, of the wrong kind or format, incomplete, or would be overwritten."""


class ModelError(JsaectlError):
    """A model cannot be loaded, or its MLP cannot be found or reproduced."""


class DataError(JsaectlError):
    """A text source is missing, unreadable or empty."""


class TrainingError(JsaectlError):
    """Training cannot go on (it diverged: a loss or weight became NaN or inf)."""


class ConfigError(JsaectlError):
    """An option value or a config file is invalid."""

    exit_code = 2


class JsaectlWarning(UserWarning):
    """Something the user should know that does not stop the command (shown as one
    ``jsaectl: note:`` line)."""
