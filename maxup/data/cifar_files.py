"""The torchvision-backed CIFAR loaders behind :mod:`maxup.data.cifar` (see its docstring).

Kept apart so that registering the datasets does not import torchvision (~2.5 s of CPU in
every process that imports :mod:`maxup.data`); it is imported when a CIFAR split is built.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
from torchvision import datasets as tvd
from torchvision import transforms as T
from torchvision.datasets.vision import VisionDataset

from maxup.errors import DataError


def _str_keys(d) -> dict:
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}



class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: dicts, lists, bytes, strings and numpy arrays.

    CIFAR-10/100 ship only as pickles, and a plain ``pickle.load`` would run whatever a
    tampered file asks for; every global outside numpy's array reconstruction is refused.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR "
                                     "batch")


class _LenientCifarMixin:
    """Replaces torchvision's MD5-based loading; see the module docstring."""

    base_folder: str
    train_list: list
    test_list: list
    meta: dict
    label_key: str
    num_classes: int
    pretty: str
    archive_hint: str

    def __init__(self, root: str, train: bool = True, transform=None, download: bool = False):
        VisionDataset.__init__(self, root, transform=transform)
        self.train = train
        folder = os.path.join(self.root, self.base_folder)
        if download:
            try:
                self.download()
            except Exception as exc:  # noqa: BLE001 - network/archive errors become DataError
                raise DataError(
                    f"data.root: downloading {self.pretty} into {self.root} failed "
                    f"({type(exc).__name__}: {exc}); download {self.filename} by hand and "
                    f"extract it under data.root"
                ) from exc
        if not os.path.isdir(folder):
            raise DataError(self._missing(folder))
        files = self.train_list if train else self.test_list
        data, targets = [], []
        for fname, _md5 in files:
            path = os.path.join(folder, fname)
            x, y = self._load_batch(path)
            data.append(x)
            targets.extend(y)
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        self.data = np.ascontiguousarray(self.data)
        self.targets = targets
        self._load_meta()

    def _missing(self, path: str) -> str:
        return (
            f"data.root: {path} not found; expected the {self.pretty} python batches "
            f"({self.archive_hint}); download {self.filename} from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html and extract it under data.root, "
            f"or set data.download=true"
        )

    def _unpickle(self, path: str) -> dict:
        if not os.path.isfile(path):
            raise DataError(self._missing(path))
        try:
            with open(path, "rb") as f:
                entry = _BatchUnpickler(f, encoding="latin1").load()
        except Exception as exc:  # noqa: BLE001 - any unreadable pickle is malformed data
            raise DataError(
                f"data.root: {path} is not a readable {self.pretty} pickle batch "
                f"({type(exc).__name__}: {exc}); re-extract {self.filename}"
            ) from exc
        if not isinstance(entry, dict):
            raise DataError(f"data.root: {path} does not hold a dict; re-extract {self.filename}")
        return _str_keys(entry)

    def _load_batch(self, path: str) -> tuple[np.ndarray, list[int]]:
        entry = self._unpickle(path)
        bad = None
        if "data" not in entry or self.label_key not in entry:
            bad = f"keys 'data' and {self.label_key!r}, found {sorted(map(str, entry))}"
        else:
            x = np.asarray(entry["data"])
            y = [int(v) for v in entry[self.label_key]]
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
                bad = f"'data' as uint8 (N, 3072), found {x.dtype} {x.shape}"
            elif len(y) != x.shape[0]:
                bad = f"{x.shape[0]} labels, found {len(y)}"
            elif y and not (0 <= min(y) and max(y) < self.num_classes):
                bad = f"labels in 0..{self.num_classes - 1}, found {min(y)}..{max(y)}"
        if bad is not None:
            raise DataError(
                f"data.root: {path} is malformed: expected {bad}; re-extract {self.filename}"
            )
        return x, y

    def _check_integrity(self) -> bool:
        folder = os.path.join(self.root, self.base_folder)
        names = [f for f, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return all(os.path.isfile(os.path.join(folder, f)) for f in names)

    def _load_meta(self) -> None:
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        meta = self._unpickle(path)
        names = meta.get(self.meta["key"])
        if names is None or len(names) != self.num_classes:
            raise DataError(
                f"data.root: {path} is malformed: expected {self.meta['key']!r} with "
                f"{self.num_classes} names; re-extract {self.filename}"
            )
        self.classes = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class CIFAR10(_LenientCifarMixin, tvd.CIFAR10):
    """torchvision ``CIFAR10`` with presence-based integrity checks and DataError reporting."""

    label_key, num_classes, pretty = "labels", 10, "CIFAR-10"
    archive_hint = "data_batch_1..5, test_batch, batches.meta"


class CIFAR100(_LenientCifarMixin, tvd.CIFAR100):
    """torchvision ``CIFAR100`` (fine labels) with the same lenient loading as CIFAR10."""

    label_key, num_classes, pretty = "fine_labels", 100, "CIFAR-100"
    archive_hint = "train, test, meta"


def transform(split: str, train_transform: str):
    if split == "train" and train_transform == "standard":
        return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])
    return T.ToTensor()
