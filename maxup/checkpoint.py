"""Checkpoint files: the one writer and the one reader of every ``*.pt`` file maxup loads.

A checkpoint is a ``torch.save``d dict (``format``, ``config``, ``model``, ``optimizer``,
``scheduler``, ``rng``, ``epoch``, ``history``, and for a task that needs more to resume,
``task``) written atomically. It is read back with
``torch.load(map_location="cpu", weights_only=True)``, so no pickled object runs code, and
every way a file can be unusable (missing, truncated, garbage, a pickle that
``weights_only`` refuses, not a dict, required keys missing) becomes one line naming the file
and what was expected: a :class:`CheckpointError`, which the CLI prints and exits 2 on.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from maxup.errors import DataError
from maxup.io import atomic_write_bytes

CHECKPOINT_FORMAT = 1
"""Version of the checkpoint layout written by :func:`save_checkpoint`."""

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "CheckpointUnpicklingError",
    "load_checkpoint",
    "save_checkpoint",
]


class CheckpointError(DataError):
    """A checkpoint file cannot be used; the message is ``checkpoint '<path>': <problem>``.

    Args:
        path: the checkpoint file.
        problem: what is wrong with it and what was expected, on one line.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path, self.problem = os.fspath(path), problem
        super().__init__(f"checkpoint {self.path!r}: {problem}")


class CheckpointUnpicklingError(CheckpointError, pickle.UnpicklingError):
    """The ``weights_only=True`` unpickler refused the file (a pickled object, or garbage).

    Also a ``pickle.UnpicklingError``, what ``torch.load`` itself raises, so code that catches
    the unpickling failure keeps catching it.
    """


def save_checkpoint(path: str | os.PathLike, *, config: dict, model: nn.Module, optimizer,
                    epoch: int, history: list[dict], task: dict | None = None) -> None:
    """Atomically write a checkpoint loadable with ``torch.load(weights_only=True)``.

    Contents: config, model and optimiser state, the scheduler's description (the learning
    rate is a pure function of the epoch), the number of finished epochs, the history, and the
    per-epoch seeding rule (the RNG state at an epoch boundary is a function of the seed).

    Args:
        path: destination file; parent directories are created.
        config: the resolved nested run config (plain dict).
        model: the trained model; a DDP wrapper is unwrapped so keys carry no ``module.``.
        optimizer: its ``state_dict()`` is stored.
        epoch: number of finished epochs.
        history: one metrics dict per finished epoch.
        task: what the task needs beyond model and optimiser to resume exactly (stored
            under ``"task"``; a language model's averaged weights, NT-ASGD state, best model).
            None (image tasks): no ``"task"`` key.
    """
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": config,
        "model": getattr(model, "module", model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"schedule": config["optim"]["schedule"], "next_epoch": epoch},
        "rng": {"rule": "reseeded per epoch from (seed, epoch, rank)", "seed": config["seed"]},
        "epoch": epoch,
        "history": history,
    }
    if task is not None:
        state["task"] = task
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


_LOADABLE = "expected a torch.save'd dict of tensors and plain values"


def _reason(exc: BaseException) -> str:
    """One line saying why ``torch.load`` failed (its messages span many lines)."""
    if isinstance(exc, EOFError):
        return "the file ends early: truncated or empty"
    if isinstance(exc, KeyError):
        # torch's legacy-format reader looks the bytes up as a record key: a text or other
        # non-torch file surfaces as a bare number ("(174812789)" said nothing).
        return f"not a torch.save file: KeyError {exc}"
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch bolds part of its advice
    # weights_only refusals open with advice about loading unsafely; what was refused in
    # this file follows the marker.
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0].split(". ")[0].rstrip(".")


def _quoted(keys: Sequence[str]) -> str:
    names = [repr(k) for k in keys]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def load_checkpoint(path: str | os.PathLike, *,
                    require: Sequence[str] = ("config", "model")) -> dict:
    """Read a checkpoint on the CPU with ``weights_only=True`` (no arbitrary unpickling).

    Args:
        path: checkpoint file.
        require: keys the dict must hold; ``()`` accepts any dict (e.g. a raw state_dict).

    Returns:
        The checkpoint dict.

    Raises:
        CheckpointError: the file is missing or unreadable, is not a dict, or lacks a
            required key (:class:`CheckpointUnpicklingError` when ``weights_only`` refused it).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file; expected a torch.save'd dict")
    try:
        with warnings.catch_warnings():
            # A file pickled by plain pickle (protocol 4) makes torch warn before refusing it:
            # the refusal below is the one line the user gets.
            warnings.filterwarnings("ignore", message="Detected pickle protocol",
                                    category=UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # a pickled object weights_only refuses, or garbage
        raise CheckpointUnpicklingError(
            path, f"cannot be loaded with weights_only=True ({_reason(exc)}); {_LOADABLE}") from exc
    except Exception as exc:  # truncated file, not a torch file, unreadable
        raise CheckpointError(
            path, f"cannot be loaded with weights_only=True ({_reason(exc)}); {_LOADABLE}") from exc
    expected = f"a dict with {_quoted(require)}" if require else "a dict"
    if not isinstance(ckpt, dict):
        raise CheckpointError(path, f"got {type(ckpt).__name__}; expected {expected}")
    missing = [k for k in require if k not in ckpt]
    if missing:
        raise CheckpointError(path, f"got a dict without {_quoted(missing)}; expected {expected}")
    return ckpt
