"""scikit-learn's bundled 8x8 digits (no files, no download), as 1x8x8 tensors in [0, 1].

Pixel values 0..16 are divided by 16. Fixed stratified split:
``train_test_split(test_size=0.3, random_state=0, stratify=y)``: 1,257 train / 540 test.
No augmentation ("standard" == "none"); ``root`` and ``download`` are ignored.
"""

from __future__ import annotations

import torch

from maxup.data.registry import DatasetInfo, register_dataset
from maxup.data.tensor import TensorImageDataset


@register_dataset(
    "digits",
    DatasetInfo(
        num_classes=10,
        in_channels=1,
        image_size=(8, 8),
        mean=(0.3056,),
        std=(0.3761,),
        default_root=None,
        train_size=1257,
        test_size=540,
    ),
)
def digits(*, split: str, root: str | None, train_transform: str, download: bool):
    """The train or test part of the fixed digits split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        d.data, d.target, test_size=0.3, random_state=0, stratify=d.target
    )
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    images = torch.as_tensor(x, dtype=torch.float32).div_(16.0).reshape(-1, 1, 8, 8)
    return TensorImageDataset(
        images, torch.as_tensor(y, dtype=torch.long), classes=[str(i) for i in range(10)]
    )
