"""Fashion-MNIST read from the four IDX ``.gz`` files (gzip + numpy, no torchvision).

Files in ``root`` (default ``/usr/share/datasets/fashion-mnist``, installed by the Debian
package ``dataset-fashion-mnist``): ``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``.
Images 1x28x28 scaled to [0, 1]; 10 classes. The "standard" train pipeline is the same as
"none" (no augmentation: the tensors are returned as stored).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np
import torch

from maxup.data.registry import DatasetInfo, register_dataset
from maxup.data.tensor import TensorImageDataset
from maxup.errors import DataError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MIRROR = "https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
_HOWTO = (
    "install the Debian package dataset-fashion-mnist, or download the four *-ubyte.gz files "
    f"from {MIRROR} into data.root, or set data.download=true"
)


def read_idx(path: str, magic: int) -> np.ndarray:
    """Read a gzip-compressed IDX file of unsigned bytes.

    Args:
        path: the ``.gz`` file.
        magic: expected magic number (2051 for images, 2049 for labels).

    Returns:
        uint8 array with the dimensions stored in the header (big-endian uint32 each).
    """
    if not os.path.isfile(path):
        raise DataError(f"data.root: {path} not found; expected a gzip IDX file; {_HOWTO}")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"data.root: {path} is not a complete gzip file ({type(exc).__name__}: {exc}); "
            f"re-download it ({_HOWTO})"
        ) from exc
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"data.root: {path} is truncated (IDX header incomplete); {_HOWTO}")
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise DataError(
            f"data.root: {path} has IDX magic number {found}, expected {magic}; {_HOWTO}"
        )
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    n = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != n:
        raise DataError(
            f"data.root: {path} is truncated or padded: header dims {dims} need {n} bytes of "
            f"data, found {len(raw) - header}; {_HOWTO}"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=n, offset=header).reshape(dims)


def load_fashion_mnist(root: str, split: str) -> TensorImageDataset:
    """Load one split as tensors.

    Args:
        root: directory holding the four ``.gz`` files.
        split: ``"train"`` or ``"test"``.

    Returns:
        ``TensorImageDataset`` with images (N, 1, 28, 28) float32 in [0, 1], labels (N,).
    """
    img_name, lbl_name = FILES[split]
    img_path, lbl_path = os.path.join(root, img_name), os.path.join(root, lbl_name)
    images = read_idx(img_path, 2051)
    labels = read_idx(lbl_path, 2049)
    if images.shape[1:] != (28, 28):
        raise DataError(f"data.root: {img_path} holds images of {images.shape[1:]}, not 28x28")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"data.root: {img_path} has {images.shape[0]} images but {lbl_path} has "
            f"{labels.shape[0]} labels; {_HOWTO}"
        )
    if labels.size and labels.max() >= 10:
        raise DataError(f"data.root: {lbl_path} has labels above 9; {_HOWTO}")
    x = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)
    return TensorImageDataset(x, torch.from_numpy(labels.astype(np.int64)), classes=CLASSES)


def _download(root: str) -> None:
    from torchvision.datasets.utils import download_url

    for names in FILES.values():
        for name in names:
            if not os.path.isfile(os.path.join(root, name)):
                try:
                    download_url(MIRROR + name, root, filename=name)
                except Exception as exc:  # noqa: BLE001 - network errors become DataError
                    raise DataError(
                        f"data.root: downloading {MIRROR + name} into {root} failed "
                        f"({type(exc).__name__}: {exc}); {_HOWTO}"
                    ) from exc


@register_dataset(
    "fashion_mnist",
    DatasetInfo(
        num_classes=10,
        in_channels=1,
        image_size=(28, 28),
        mean=(0.2860,),
        std=(0.3530,),
        default_root=DEFAULT_ROOT,
        train_size=60000,
        test_size=10000,
    ),
)
def fashion_mnist(*, split: str, root: str | None, train_transform: str, download: bool):
    """Fashion-MNIST split from IDX ``.gz`` files; no augmentation (see module docstring)."""
    root = root or DEFAULT_ROOT
    if download:
        _download(root)
    return load_fashion_mnist(root, split)
