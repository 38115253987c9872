"""How long-running library functions report progress without knowing about a terminal.

The library calls a :class:`Reporter`; the CLI passes one that draws rich progress bars
on stderr, tests and scripts pass nothing and get :data:`SILENT`.
"""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    def start(self, description: str, total: int | None, unit: str) -> None:
        """A new phase begins; ``total`` units of work (None if unknown)."""

    def advance(self, n: int, **metrics: float) -> None:
        """``n`` more units are done; ``metrics`` are shown beside the bar (loss=..., ...)."""

    def note(self, message: str) -> None:
        """A line of information for a human (never parsed by anything)."""

    def finish(self) -> None:
        """The current phase is over."""


class _Silent:
    def start(self, description: str, total: int | None, unit: str) -> None:
        pass

    def advance(self, n: int, **metrics: float) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def finish(self) -> None:
        pass


SILENT: Reporter = _Silent()
