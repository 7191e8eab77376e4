"""What the loop needs from a task, and which task a config is."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn

from maxup.config import RunConfig
from maxup.engine.dist import DistContext
from maxup.engine.image import ImageTask, build_run
from maxup.engine.rng import derive_seed, seed_everything


class Task(Protocol):
    """What the loop needs from a task (image classification, language modelling).

    Attributes:
        model: the network (unwrapped); the loop checkpoints its ``state_dict``.
        optimizer: its ``state_dict`` is checkpointed too.
        ddp: whether the loop wraps the model in DDP for ``world_size > 1`` (a task that
            averages gradients itself says False).
        finite_keys: evaluation metrics that must be finite (else the run fails).
        csv_columns: the columns of ``metrics.csv``.

    Optional: a task with a ``save_mid_epoch`` attribute gets the loop's save function there
    (called on every rank with the number of finished epochs; the main rank writes), and a
    ``resume_note`` string after a resume is appended to the log's "resumed" line.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    ddp: bool
    finite_keys: tuple[str, ...]
    csv_columns: tuple[str, ...]

    def train_epoch(self, model: nn.Module, epoch: int, dist: DistContext,
                    progress: bool) -> dict:
        """Train 0-based ``epoch`` (re-seeding from (seed, epoch, rank)); its metrics,
        including ``epoch``, ``train_s`` and ``selection_s``."""

    def evaluate(self, model: nn.Module, epoch: int, dist: DistContext) -> dict:
        """Evaluation metrics after ``epoch`` (and the task's end-of-epoch bookkeeping)."""

    def checkpoint_state(self) -> dict | None:
        """What exact resume needs beyond model and optimiser (None: nothing)."""

    def load_checkpoint_state(self, state: dict | None) -> None:
        """Restore :meth:`checkpoint_state`'s output."""

    def check_resumable(self, model_state: dict, source: Path) -> None:
        """Refuse (one line) a checkpoint this task cannot continue from."""

    def record_facts(self) -> dict:
        """Facts merged into the record's ``environment`` (e.g. a corpus checksum)."""

    def summary_line(self, metrics: dict, epochs: int) -> str:
        """The one log line of an epoch."""


def build_task(cfg: RunConfig, device: torch.device, dist: DistContext) -> Task:
    """The task of a config: language modelling when ``cfg.lm`` is set, else images.

    Seeds the global generators for the model's initialisation first.
    """
    if getattr(cfg, "lm", None) is not None:
        from maxup.lm.task import LMTask  # imported on demand: image runs never load the LM

        seed_everything(derive_seed(cfg.seed, "init"), device)
        return LMTask(cfg, device, rank=dist.rank, world_size=dist.world_size)
    return ImageTask(build_run(cfg, device))
