"""scikit-learn's bundled 8x8 digits (no files, no download), as 1x8x8 tensors in [0, 1].

Pixel values 0..16 are divided by 16. Fixed stratified split, the one
``train_test_split(test_size=0.3, random_state=0, stratify=y)`` draws: 1,257 train / 540 test.
No augmentation ("standard" == "none"); ``root`` and ``download`` are ignored.

The pixels are read straight from scikit-learn's bundled ``digits.csv.gz`` and the split's row
order from ``digits_split.json`` (the indices ``train_test_split`` returns, stored once):
importing scikit-learn costs ~2 s of CPU in every process that loads digits — each sweep trial,
each Ray Train worker — for one file read. ``tests/test_data.py`` checks both against
scikit-learn itself.
"""

from __future__ import annotations

import importlib.util
import json
from functools import cache
from pathlib import Path

import numpy as np
import torch

from maxup.data.registry import DatasetInfo, register_dataset
from maxup.data.tensor import TensorImageDataset

SPLIT_FILE = Path(__file__).with_name("digits_split.json")


def csv_path() -> Path:
    """scikit-learn's ``datasets/data/digits.csv.gz``, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("scikit-learn is needed for the digits dataset")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


@cache
def _table() -> tuple[np.ndarray, np.ndarray, dict[str, list[int]]]:
    """(pixels (1797, 64) float64 in 0..16, labels (1797,) int64, rows of each split), read
    once per process: the train and test splits are usually both built."""
    data = np.loadtxt(csv_path(), delimiter=",")
    return data[:, :-1], data[:, -1].astype(np.int64), json.loads(SPLIT_FILE.read_text())


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
    pixels, labels, splits = _table()
    rows = np.asarray(splits[split], dtype=np.int64)
    images = torch.as_tensor(pixels[rows], dtype=torch.float32).div_(16.0).reshape(-1, 1, 8, 8)
    return TensorImageDataset(
        images, torch.as_tensor(labels[rows], dtype=torch.long),
        classes=[str(i) for i in range(10)]
    )
