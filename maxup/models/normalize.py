"""Per-channel input normalisation as a module, so models take pixel-space inputs in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from maxup.errors import ConfigError


class Normalize(nn.Module):
    """Compute ``(x - mean) / std`` per channel; mean and std are buffers, not parameters.

    The buffers are persistent (they appear in ``state_dict``, so a checkpoint records the
    normalisation it was trained with) but are not ``nn.Parameter`` objects, so parameter
    counts and optimisers never see them.

    Args:
        mean: per-channel means, length C (or length 1, broadcast over all channels).
        std: per-channel standard deviations, same length as ``mean``, all > 0.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t = torch.as_tensor(tuple(float(m) for m in mean), dtype=torch.float32)
        std_t = torch.as_tensor(tuple(float(s) for s in std), dtype=torch.float32)
        if mean_t.ndim != 1 or mean_t.numel() == 0 or mean_t.shape != std_t.shape:
            raise ConfigError(
                "model.mean/std",
                (tuple(mean), tuple(std)),
                "two non-empty sequences of equal length",
            )
        if bool((std_t <= 0).any()):
            raise ConfigError("model.std", tuple(std), "strictly positive values")
        self.register_buffer("mean", mean_t.view(-1, 1, 1))
        self.register_buffer("std", std_t.view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a batch.

        Args:
            x: images, shape (N, C, H, W), pixel values in [0, 1].

        Returns:
            Tensor of shape (N, C, H, W).
        """
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
