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

from maxup.data.registry import DatasetInfo, register_dataset
from maxup.errors import DataError


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
    from maxup.data.cifar_files import CIFAR10, transform

    root = _root(root, "CIFAR-10", "cifar-10-batches-py")
    return CIFAR10(root, split == "train", transform(split, train_transform), download)


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
    from maxup.data.cifar_files import CIFAR100, transform

    root = _root(root, "CIFAR-100", "cifar-100-python")
    return CIFAR100(root, split == "train", transform(split, train_transform), download)
