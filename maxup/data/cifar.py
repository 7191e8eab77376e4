"""CIFAR-10 / CIFAR-100 from the standard python-pickle batches.

Uses torchvision's ``CIFAR10``/``CIFAR100`` classes (file lists, URLs, ``download``,
``__getitem__`` via PIL and transforms) with the loading step replaced, so that:

* file integrity is checked by presence and by parsing, not by MD5: torchvision's
  ``_check_integrity``/``_load_meta`` compare MD5 sums of every batch (slow on each
  construction, and refusing any re-encoded or hand-made batches). MD5s are still
  checked by torchvision on the archive when ``download=True`` fetches it;
* batches pickled with ``bytes`` keys (``b"data"``, ``b"labels"``) load as well as the
  official Python-2 ``str`` keys;
* a missing or malformed file raises :class:`maxup.errors.DataError` naming it.

Layout: ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` and
``root/cifar-100-python/{train,test,meta}``. Train "standard": RandomCrop(32, padding=4) +
RandomHorizontalFlip + ToTensor; train "none" and test: ToTensor.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
from torchvision import datasets as tvd
from torchvision import transforms as T
from torchvision.datasets.vision import VisionDataset

from maxup.data.registry import DatasetInfo, register_dataset
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


def _transform(split: str, train_transform: str):
    if split == "train" and train_transform == "standard":
        return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])
    return T.ToTensor()


def _root(root: str | None, pretty: str, folder: str) -> str:
    if root is None:
        raise DataError(
            f"data.root: not set; expected a directory holding {folder}/ with the {pretty} "
            f"python batches; set data.root (and data.download=true to fetch them)"
        )
    return root


@register_dataset(
    "cifar10",
    DatasetInfo(
        num_classes=10,
        in_channels=3,
        image_size=(32, 32),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        default_root=None,
        train_size=50000,
        test_size=10000,
    ),
)
def cifar10(*, split: str, root: str | None, train_transform: str, download: bool):
    """CIFAR-10 split from ``root/cifar-10-batches-py``."""
    root = _root(root, "CIFAR-10", CIFAR10.base_folder)
    return CIFAR10(root, split == "train", _transform(split, train_transform), download)


@register_dataset(
    "cifar100",
    DatasetInfo(
        num_classes=100,
        in_channels=3,
        image_size=(32, 32),
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        default_root=None,
        train_size=50000,
        test_size=10000,
    ),
)
def cifar100(*, split: str, root: str | None, train_transform: str, download: bool):
    """CIFAR-100 split (fine labels) from ``root/cifar-100-python``."""
    root = _root(root, "CIFAR-100", CIFAR100.base_folder)
    return CIFAR100(root, split == "train", _transform(split, train_transform), download)
