"""A tiny deterministic, learnable dataset for engine tests (no files).

3x16x16 images, 10 classes, 1,024 train / 512 test. Each class has a prototype: a random
4x4x3 pattern in [0, 1] upsampled (nearest) to 16x16. An example is its class prototype
plus Gaussian noise (std 0.3), clipped to [0, 1]. Prototypes come from a generator seeded
with 0, the train split from seed 1 and the test split from seed 2, so the data are
identical on every call and platform. Labels are balanced (i % 10), then shuffled.
No augmentation ("standard" == "none"); ``root`` and ``download`` are ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maxup.data.registry import DatasetInfo, register_dataset
from maxup.data.tensor import TensorImageDataset

NUM_CLASSES, SIZE, NOISE = 10, 16, 0.3
SIZES = {"train": 1024, "test": 512}


def prototypes() -> torch.Tensor:
    """Class prototypes, shape (10, 3, 16, 16), values in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(NUM_CLASSES, 3, 4, 4, generator=g)
    return F.interpolate(coarse, size=(SIZE, SIZE), mode="nearest")


def make_split(split: str) -> TensorImageDataset:
    """Generate a split.

    Args:
        split: ``"train"`` or ``"test"``.

    Returns:
        ``TensorImageDataset`` with images (N, 3, 16, 16) float32 in [0, 1], labels (N,).
    """
    n = SIZES[split]
    g = torch.Generator().manual_seed(1 if split == "train" else 2)
    labels = (torch.arange(n) % NUM_CLASSES)[torch.randperm(n, generator=g)]
    noise = torch.randn(n, 3, SIZE, SIZE, generator=g) * NOISE
    images = (prototypes()[labels] + noise).clamp_(0.0, 1.0)
    return TensorImageDataset(images, labels, classes=[str(i) for i in range(NUM_CLASSES)])


@register_dataset(
    "synthetic",
    DatasetInfo(
        num_classes=NUM_CLASSES,
        in_channels=3,
        image_size=(SIZE, SIZE),
        mean=(0.4763, 0.5065, 0.5012),
        std=(0.3377, 0.3373, 0.3413),
        default_root=None,
        train_size=SIZES["train"],
        test_size=SIZES["test"],
    ),
)
def synthetic(*, split: str, root: str | None, train_transform: str, download: bool):
    """The synthetic split (deterministic)."""
    return make_split(split)
