"""One Ctrl-C story for the long commands (``maxup sweep``, ``maxup train``).

A Ctrl-C reaches the whole foreground process group. Left to the libraries it gave three
stories: Ray Tune caught it and advised ``Tuner.restore(...)`` (our resume is: run the same
command again); during Ray's start-up the ``KeyboardInterrupt`` landed in a fork hook that
swallowed it ("Exception ignored in ...") and the sweep ran on to the end; and after it, Ray's
dashboard and runtime-env agents outlived the driver.

:func:`catching` installs one SIGINT handler for the command: the first Ctrl-C raises
``KeyboardInterrupt`` in the main thread and is remembered, so :func:`check` raises it again
at the next safe point when library code swallowed it; Tune's own handler is switched off
(``TUNE_DISABLE_SIGINT_HANDLER``), so the interrupt leaves ``Tuner.fit`` as an exception. A
second Ctrl-C while the command stops prints that it is stopping and is otherwise ignored, so
the shutdown that leaves nothing running is not cut short. The command then says what was
saved and the exact command that continues it (:func:`trial_progress` reads what a trial
has on disk); the embedded Ray's watchdog (:mod:`maxup.platform.reaper`) kills whatever of
Ray outlived ``ray.shutdown()``.

No torch, no Ray at import time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

_state = {"installed": False, "hit": 0, "deferred": False}


@contextlib.contextmanager
def catching():
    """While the block runs, the command's SIGINT handler is installed and Tune's switched
    off; both are as before afterwards (a command run in-process, as tests do, leaves the
    process as it found it). Main thread only; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    tune = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    _state.update(installed=True, hit=0)
    signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _state.update(installed=False)
        if tune is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune


def _handler(signum, frame) -> None:
    _state["hit"] += 1
    if _state.get("deferred"):
        if _state["hit"] == 1:
            _say("maxup: stopping as soon as Ray has started (stopping it half-started "
                 "would leave its agents running)...")
        return
    if _state["hit"] == 1:
        raise KeyboardInterrupt
    _say("maxup: stopping (saving what was done; nothing will be left running)...")


def _say(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


@contextlib.contextmanager
def deferred():
    """While the block runs (Ray starting its processes), a Ctrl-C is noted, not raised; it
    is raised when the block ends. A ``KeyboardInterrupt`` inside ``ray.init`` stopped it
    half-way, and the dashboard and runtime-env agents it had just started outlived
    everything (their raylet gone, they were no longer the driver's descendants)."""
    before = _state.get("deferred", False)
    _state["deferred"] = True
    try:
        yield
    finally:
        _state["deferred"] = before
    if not before:
        check()


def interrupted() -> bool:
    """Whether a Ctrl-C arrived since :func:`catch`."""
    return _state["hit"] > 0


def check() -> None:
    """Raise ``KeyboardInterrupt`` if a Ctrl-C arrived (library code may have swallowed it)."""
    if _state["hit"]:
        raise KeyboardInterrupt


def stop_ray() -> None:
    """Shut down this process's Ray after a Ctrl-C, once its watchdog has seen every process
    of it (:func:`maxup.platform.reaper.settle`); the watchdog kills what outlives this."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        from maxup.platform import reaper

        reaper.settle()
        ray.shutdown()


def exit_leaving_ray_to_the_watchdog(status: int) -> None:
    """End the process now with ``status``, once the embedded Ray's watchdog has seen every
    process of it (:func:`maxup.platform.reaper.settle`): the watchdog kills them when this
    process is gone. For a command whose Ray work still runs in another thread, where
    ``ray.shutdown()`` would race it (see ``maxup train --workers``)."""
    try:
        from maxup.platform import reaper

        reaper.settle()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status)


def trial_progress(trial_dir: str | os.PathLike) -> tuple[int, int | None]:
    """``(epochs recorded, epoch its checkpoint resumes after)`` of a trial or run folder;
    the second is None without a usable checkpoint. Reads the checkpoint's ``epoch`` only
    (memory-mapped, ``weights_only``)."""
    from maxup import records, store

    files = store.TrialDir(trial_dir)
    rec = records.load_record(files.record)
    done = len(rec.history) if rec is not None else 0
    if not files.checkpoint.is_file():
        return done, None
    try:
        import torch

        ckpt = torch.load(files.checkpoint, map_location="cpu", weights_only=True, mmap=True)
        return done, int(ckpt["epoch"])
    except Exception:  # noqa: BLE001 - an unreadable checkpoint: the run starts over
        return done, None


def resume_words(done: int, after: int | None, epochs: int) -> str:
    """``"3 of 8 epochs recorded; resumes after epoch 3 (its checkpoint)"``."""
    where = (f"resumes after epoch {after} (its checkpoint)" if after is not None
             else "no checkpoint yet: starts over")
    return f"{done} of {epochs} epochs recorded; {where}"
