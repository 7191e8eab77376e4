"""A per-epoch progress bar on stderr."""

from __future__ import annotations

import sys


class Progress:
    """A minimal per-epoch progress bar on stderr (only when it is a terminal)."""

    def __init__(self, enabled: bool, total: int, epoch: int, epochs: int):
        self.enabled = enabled and sys.stderr.isatty()
        self.total, self.label = total, f"epoch {epoch}/{epochs}"

    def update(self, done: int, loss: float) -> None:
        if self.enabled:
            width = 30
            filled = int(width * done / max(self.total, 1))
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                             f"{done}/{self.total} loss {loss:.4f}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 80 + "\r")
            sys.stderr.flush()
