"""Where an epoch is: a progress bar on stderr (a terminal only) and the position that
:mod:`maxup.platform.liveness`'s heartbeat names while nothing else is printed.

The position of the epoch training in this process is kept here (:func:`position`) whether or
not the bar is shown; the module imports nothing heavy, so the heartbeat thread can read it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass
class Position:
    """How far the epoch in progress is: ``done`` of ``total`` ``unit``s (batch, window)."""

    epoch: int
    epochs: int
    done: int
    total: int
    unit: str


_current: Position | None = None


def position() -> Position | None:
    """The position of the epoch training in this process, if one is training now."""
    return _current


def clear() -> None:
    """No epoch is training here (a run ended, normally or not): a later run's heartbeat in
    the same process must not name this run's last window or batch."""
    global _current
    _current = None


class Progress:
    """A minimal per-epoch progress bar on stderr (only when it is a terminal); it also
    publishes the epoch's :class:`Position`.

    Args:
        enabled: show the bar (and stderr is a terminal).
        total: steps in the epoch (``unit``s).
        epoch: 1-based epoch.
        epochs: the run's epochs.
        unit: what a step is called (``batch``; a language model's ``window``).
    """

    def __init__(self, enabled: bool, total: int, epoch: int, epochs: int,
                 unit: str = "batch"):
        global _current
        self.enabled = enabled and sys.stderr.isatty()
        self.total, self.label = total, f"epoch {epoch}/{epochs}"
        self.position = _current = Position(epoch, epochs, 0, total, unit)

    def update(self, done: int, loss: float) -> None:
        self.position.done = done
        if self.enabled:
            width = 30
            filled = int(width * done / max(self.total, 1))
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                             f"{done}/{self.total} loss {loss:.4f}")
            sys.stderr.flush()

    def close(self) -> None:
        global _current
        if _current is self.position:
            _current = None  # evaluation and the epoch's line follow; no step is in progress
        if self.enabled:
            sys.stderr.write("\r" + " " * 80 + "\r")
            sys.stderr.flush()
