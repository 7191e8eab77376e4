"""A line at least every :data:`EVERY_S` seconds while a command trains.

An epoch line comes once per epoch; a language model's epoch took 8.8 min on the README's KJV
run, and a data-parallel run's start-up 39 s, with nothing printed meanwhile (issue 27).
:class:`Heartbeat` watches when the command last printed and, after :data:`EVERY_S` seconds of
silence, prints a line saying what is in progress (a caller-supplied function writes it, e.g.
"... epoch 2/15 (window 440 of 1,115) in progress for 2.1 min; the previous epoch took 8.8
min"). It runs in a daemon thread and prints nothing once stopped. Imports neither torch nor
Ray.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: The longest silence while training, in seconds.
EVERY_S = 10.0


class Heartbeat:
    """Print ``describe(silent_s)`` after every ``every`` seconds without a line.

    Args:
        describe: what is in progress, given the seconds since the last line.
        echo: where the line goes (default: stdout, flushed).
        every: the longest silence.
        last_line_at: when the command printed its last line (``time.monotonic()``), if
            before this heartbeat starts.
    """

    def __init__(self, describe: Callable[[float], str], echo: Callable[[str], None] | None = None,
                 every: float = EVERY_S, last_line_at: float | None = None):
        self.describe, self.every = describe, every
        self.echo = echo or (lambda line: print(line, flush=True))
        # when the command last printed (time.monotonic()); default: now
        self._last = time.monotonic() if last_line_at is None else last_line_at
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="maxup-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def last_line_at(self) -> float:
        """When the last line was printed (``time.monotonic()``)."""
        with self._lock:
            return self._last

    def printed(self) -> None:
        """The command printed a line: the silence starts again."""
        with self._lock:
            self._last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def _run(self) -> None:
        # Checked twice a second and due a second early, so that a line comes within
        # ``every`` seconds even when this thread wakes late on a busy machine.
        while not self._stop.wait(self.tick):
            if not self.beat(time.monotonic()):
                return

    @property
    def tick(self) -> float:
        return min(0.5, self.every / 10)

    def beat(self, now: float) -> bool:
        """Print the line if the silence at ``now`` is due one (``every`` less two ticks);
        False once stopped or stdout is gone."""
        with self._lock:
            silent = now - self._last
        if silent < self.every - 2 * self.tick:
            return True
        try:
            line = self.describe(silent)
        except Exception as exc:  # noqa: BLE001 - a heartbeat never ends a run
            line = f"... still working ({type(exc).__name__} describing it)"
        if self._stop.is_set():
            return False
        try:
            self.echo(line)
        except (OSError, ValueError):  # stdout closed
            return False
        with self._lock:
            self._last = now
        return True


def epoch_position(epoch: int) -> str:
    """``window 440 of 1,115`` (a language model; ``batch …`` for images): how far epoch
    ``epoch`` (1-based) is, when it trains in this process (:mod:`maxup.engine.progress`
    publishes it; read without importing the engine, which would import torch); else ""."""
    import sys

    progress = sys.modules.get("maxup.engine.progress")
    pos = progress.position() if progress is not None else None
    if pos is None or pos.epoch != epoch or not pos.total:
        return ""
    return f"{pos.unit} {pos.done:,} of {pos.total:,}"


def run_describer(record_path, epochs: int) -> Callable[[float], str]:
    """What a training run is doing, from its record: the epoch in progress, how far it is
    (the window or batch, when it trains in this process), how long it has run (since the
    line that ended the previous one) and how long the previous one took."""
    from maxup import records
    from maxup.platform.cost import fmt_duration

    seen = {"n": None, "since": time.monotonic()}

    def describe(silent: float) -> str:
        rec = records.load_record(record_path)
        hist = rec.history if rec is not None else []
        now = time.monotonic()
        if seen["n"] is not None and len(hist) != seen["n"]:
            seen["since"] = now - silent  # the epoch's line was the last one printed
        seen["n"] = len(hist)
        last = hist[-1].get("wall_s") if hist else None
        took = (f"; the previous epoch took {fmt_duration(last)}"
                if isinstance(last, int | float) else "")
        where = epoch_position(len(hist) + 1)
        if where:
            what = f"epoch {len(hist) + 1}/{epochs} ({where})"
        else:
            what = f"epoch {len(hist) + 1}/{epochs}" if hist else f"set-up or epoch 1/{epochs}"
        return f"... {what} in progress for {fmt_duration(now - seen['since'])}{took}"

    return describe
