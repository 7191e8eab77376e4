"""Small models for real runs on a CPU: ``small_cnn`` and ``mlp``."""

from __future__ import annotations

import torch
from torch import nn

from maxup.models.registry import register_model


class SmallCNN(nn.Module):
    """Two conv-BN-ReLU blocks (32, 64 channels; the second with stride 2), 2x2 pool, linear.

    Works on any input of at least 2x2 pixels (1x8x8 digits, 1x28x28 Fashion-MNIST,
    3xHxW). The first block is followed by 2x2 max-pooling when the input is at least
    16x16, which keeps a Fashion-MNIST epoch of 2,000 images around a second on 2 CPU cores.

    Args:
        num_classes: output logits.
        in_channels: input channels.
        dropout: dropout on the pooled features before the linear layer.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, dropout: float = 0.0):
        super().__init__()
        self.block1 = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
        # A 2x2 pooled grid keeps coarse position, which digits need (a global pool loses it).
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(64 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, C, H, W) normalised images. Returns (N, num_classes) logits."""
        x = self.block1(x)
        if min(x.shape[-2:]) >= 16:
            x = nn.functional.max_pool2d(x, 2)
        x = self.block2(x)
        return self.fc(self.dropout(self.pool(x).flatten(1)))


class MLP(nn.Module):
    """Adaptive average pool to ``image_size``, flatten, two hidden ReLU layers, linear.

    No BatchNorm and no dropout (tests use it as a model without BN). The pooling is the
    identity when inputs already have size ``image_size``.

    Args:
        num_classes: output logits.
        in_channels: input channels.
        image_size: (H, W) the input is pooled to before flattening.
        hidden: width of both hidden layers.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        image_size: tuple[int, int] = (8, 8),
        hidden: int = 128,
    ):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(tuple(image_size))
        d = in_channels * image_size[0] * image_size[1]
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(d, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, C, H, W) normalised images. Returns (N, num_classes) logits."""
        if tuple(x.shape[-2:]) != tuple(self.pool.output_size):
            x = self.pool(x)
        return self.layers(x)


@register_model("small_cnn")
def small_cnn(*, num_classes: int, in_channels: int = 3, dropout: float = 0.0, image_size=None):
    """Small CNN (``image_size`` ignored); ``dropout`` before the linear layer."""
    return SmallCNN(num_classes, in_channels, dropout)


@register_model("mlp")
def mlp(*, num_classes: int, in_channels: int = 3, dropout: float = 0.0, image_size=None):
    """MLP on inputs pooled to ``image_size`` (default (8, 8)); ``dropout`` is ignored."""
    return MLP(num_classes, in_channels, tuple(image_size) if image_size else (8, 8))
