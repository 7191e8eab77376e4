"""Dataset registry: ``DatasetInfo`` per name, ``build_dataset`` and ``register_dataset``.

Nothing is ever downloaded unless ``download=True`` is passed. Every dataset yields
``(image, label)`` with ``image`` a float32 tensor (C, H, W) with values in [0, 1] and
``label`` a Python int. Missing or malformed data raises :class:`maxup.errors.DataError`
with one line naming the path, what was expected there and how to get it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Subset

from maxup.data.tensor import TensorImageDataset
from maxup.errors import ConfigError

SPLITS = ("train", "test")
TRAIN_TRANSFORMS = ("standard", "none")


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a registered dataset.

    Args:
        num_classes: number of labels.
        in_channels: image channels C.
        image_size: (H, W) of the images the dataset yields.
        mean: per-channel pixel mean in [0, 1] space (for ``Normalize``).
        std: per-channel pixel standard deviation.
        default_root: directory used when ``root`` is None (None: ``root`` is required,
            or the dataset needs no files).
        train_size: number of training examples (None where unknown).
        test_size: number of test examples (None where unknown).
        kind: ``"image"`` (``(image, label)`` datasets) or ``"text"`` (a word-level corpus,
            :mod:`maxup.data.corpus`; ``num_classes`` is its vocabulary size).
    """

    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_root: str | None
    train_size: int | None
    test_size: int | None
    kind: str = "image"


#: A builder takes keyword arguments ``split``, ``root`` (str or None), ``train_transform``
#: and ``download`` and returns the full split.
DatasetFn = Callable[..., Dataset]

_REGISTRY: dict[str, tuple[DatasetInfo, DatasetFn]] = {}


def register_dataset(name: str, info: DatasetInfo) -> Callable[[DatasetFn], DatasetFn]:
    """Decorator registering a dataset builder and its :class:`DatasetInfo` under ``name``.

    Args:
        name: registry key; registering a different builder under a used name raises
            ``ValueError``.
        info: the dataset's static facts.

    Returns:
        The decorator, which returns the builder unchanged.
    """

    def deco(fn: DatasetFn) -> DatasetFn:
        if name in _REGISTRY and _REGISTRY[name][1] is not fn:
            raise ValueError(f"dataset {name!r} is already registered")
        _REGISTRY[name] = (info, fn)
        return fn

    return deco


def list_datasets() -> list[str]:
    """Sorted names of all registered datasets."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> tuple[DatasetInfo, DatasetFn]:
    if name not in _REGISTRY:
        raise ConfigError("data.name", name, "one of " + ", ".join(list_datasets()))
    return _REGISTRY[name]


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a registered dataset.

    Args:
        name: one of :func:`list_datasets`.
    """
    return _lookup(name)[0]


def subset_indices(n: int, k: int, seed: int) -> torch.Tensor:
    """The sorted indices of a fixed random subset of size ``k`` of ``range(n)``.

    Args:
        n: dataset length.
        k: subset size, 1 <= k <= n.
        seed: the subset is a function of (n, k, seed) only.

    Returns:
        Long tensor of shape (k,), sorted ascending.
    """
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=g)[:k].sort().values


def build_dataset(
    name: str,
    *,
    split: str,
    root: str | os.PathLike | None = None,
    train_transform: str = "standard",
    download: bool = False,
    subset: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Build one split of a registered dataset.

    Args:
        name: one of :func:`list_datasets`.
        split: ``"train"`` or ``"test"``.
        root: data directory; None uses the dataset's ``default_root``.
        train_transform: ``"standard"`` (the dataset's usual training augmentation) or
            ``"none"`` (the deterministic test pipeline); ignored for the test split.
        download: allow downloading missing files (never otherwise).
        subset: if set, a fixed random subset of this size of the **train** split, chosen by
            ``seed`` (same seed, same indices). It is ignored for the test split, which is
            always complete.
        seed: seed of the subset choice.

    Returns:
        A dataset of ``(image float32 (C, H, W) in [0, 1], int label)``. In-memory datasets
        (digits, fashion_mnist, synthetic) are :class:`TensorImageDataset` with ``.images``
        (N, C, H, W) float32 and ``.labels`` (N,) long, also after subsetting. A subset of a
        file-backed dataset is a ``torch.utils.data.Subset``. Subsets expose ``.indices``.
    """
    info, fn = _lookup(name)
    if split not in SPLITS:
        raise ConfigError("data.split", split, "one of " + ", ".join(SPLITS))
    if train_transform not in TRAIN_TRANSFORMS:
        raise ConfigError("data.train_transform", train_transform, "one of standard, none")
    if subset is not None and (
        isinstance(subset, bool) or not isinstance(subset, int) or subset < 1
    ):
        raise ConfigError("data.subset", subset, "a positive integer or null")
    root_s = os.fspath(root) if root is not None else info.default_root
    if root_s is not None:
        root_s = os.path.expanduser(root_s)
    ds = fn(split=split, root=root_s, train_transform=train_transform, download=bool(download))
    if subset is None or split != "train":
        return ds
    n = len(ds)
    if subset > n:
        raise ConfigError("data.subset", subset, f"an integer in 1..{n} (the train split size)")
    idx = subset_indices(n, subset, seed)
    if isinstance(ds, TensorImageDataset):
        out = TensorImageDataset(ds.images[idx], ds.labels[idx], classes=ds.classes)
        out.indices = idx
        return out
    return Subset(ds, idx.tolist())
