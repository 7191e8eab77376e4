"""An in-memory image dataset with preloaded tensors (cheap ``__getitem__``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset


class TensorImageDataset(Dataset):
    """Images and labels held as tensors; item ``i`` is ``(images[i], int(labels[i]))``.

    No transform is applied, so ``.images`` is exactly what ``__getitem__`` yields and an
    engine may batch ``images[idx]`` directly.

    Args:
        images: float32 tensor (N, C, H, W) with values in [0, 1].
        labels: long tensor (N,).
        classes: optional class names, length num_classes.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str] | None = None
    ):
        if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"images (N,C,H,W) and labels (N,) expected, got {tuple(images.shape)} "
                f"and {tuple(labels.shape)}"
            )
        self.images = images.to(torch.float32).contiguous()
        self.labels = labels.to(torch.long).contiguous()
        self.classes = list(classes) if classes is not None else None
        self.indices: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def to(self, device: torch.device | str) -> TensorImageDataset:
        """The same dataset with its tensors on ``device`` (a new object; this one unchanged)."""
        out = TensorImageDataset.__new__(TensorImageDataset)
        out.images, out.labels = self.images.to(device), self.labels.to(device)
        out.classes = self.classes
        out.indices = self.indices
        return out
