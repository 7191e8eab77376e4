"""What each epoch of a config does: its learning rate and its number of MaxUp copies.

Pure functions of the config and the epoch (no torch): the engine, the language-model task and
the cost model all ask here, so the warm-up rule is written once. A run restored from the
checkpoint of epoch k takes the same values as an uninterrupted one.
"""

from __future__ import annotations

import math


def copies_at(epoch: int, *, m: int, warmup_epochs: int) -> int:
    """MaxUp copies per example in 0-based ``epoch``: 1 during the warm-up epochs (plain
    augmentation, the paper's first epochs), else ``m``.

    Args:
        epoch: 0-based epoch.
        m: ``maxup.m``.
        warmup_epochs: ``maxup.warmup_epochs``.
    """
    return m if epoch >= warmup_epochs and m > 1 else 1


def learning_rate(cfg, epoch: int) -> float:
    """Learning rate of an image run in 0-based ``epoch`` (per-epoch schedules, as the paper's
    recipes).

    Args:
        cfg: a :class:`~maxup.config.RunConfig`.
        epoch: 0-based epoch.
    """
    o = cfg.optim
    if o.schedule == "constant":
        return o.lr
    if o.schedule == "cosine":
        return 0.5 * o.lr * (1 + math.cos(math.pi * epoch / cfg.train.epochs))
    return o.lr * o.gamma ** sum(epoch >= m for m in o.milestones)
