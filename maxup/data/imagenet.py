"""ImageNet (ILSVRC-2012) as two ``ImageFolder`` trees: ``root/train`` and ``root/val``.

Train "standard": RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor. Train "none"
and test: Resize(256) + CenterCrop(224) + ToTensor (single centre crop). ImageNet is never
downloaded (``download=True`` is refused with a DataError).
"""

from __future__ import annotations

import os

from maxup.data.registry import DatasetInfo, register_dataset
from maxup.errors import DataError

_HOWTO = (
    "expected one sub-directory per class holding its images (ImageFolder layout); "
    "download ILSVRC2012 from https://image-net.org and arrange train/ and val/ by class"
)


@register_dataset(
    "imagenet",
    DatasetInfo(
        num_classes=1000,
        in_channels=3,
        image_size=(224, 224),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        default_root=None,
        train_size=1281167,
        test_size=50000,
    ),
)
def imagenet(*, split: str, root: str | None, train_transform: str, download: bool):
    """ImageNet split: ``ImageFolder(root/train)`` or ``ImageFolder(root/val)``."""
    if download:
        raise DataError(
            "data.download: ImageNet cannot be downloaded automatically; "
            "set data.download=false and " + _HOWTO
        )
    if root is None:
        raise DataError(f"data.root: not set; {_HOWTO}")
    folder = os.path.join(root, "train" if split == "train" else "val")
    if not os.path.isdir(folder):
        raise DataError(f"data.root: {folder} not found; {_HOWTO}")
    from torchvision import datasets as tvd  # here: registering must not import torchvision
    from torchvision import transforms as T

    if split == "train" and train_transform == "standard":
        tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor()])
    else:
        tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])
    try:
        return tvd.ImageFolder(folder, transform=tf)
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"data.root: {folder} holds no usable images ({exc}); {_HOWTO}") from exc
