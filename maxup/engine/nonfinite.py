"""Non-finite losses and metrics: the two ways a run fails by arithmetic, never recorded as
completed."""

from __future__ import annotations

import math


class NonFiniteLoss(Exception):
    """Raised inside the loop when the loss is NaN or infinite."""

    reason = "non-finite loss"

    def __init__(self, epoch: int, step: int | None, value: float, message: str = ""):
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(message or f"non-finite loss {value} at epoch {epoch}, step {step}")


class NonFiniteMetric(NonFiniteLoss):
    """Raised when an evaluation metric is NaN or infinite: such a run is never completed."""

    reason = "non-finite metric"

    def __init__(self, epoch: int, metric: str, value: float):
        super().__init__(epoch, None, value, f"non-finite {metric} {value} at epoch {epoch}")
        self.metric = metric


def check_finite(metrics: dict, epoch: int,
                  keys: tuple[str, ...] = ("test_loss", "test_acc", "test_top5")) -> None:
    """Raise :class:`NonFiniteMetric` for a NaN/inf evaluation metric (the sums behind them
    are all-reduced, so every rank raises together)."""
    for key in keys:
        value = metrics.get(key)
        if value is not None and not math.isfinite(value):
            raise NonFiniteMetric(epoch, key, value)
