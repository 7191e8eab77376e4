"""Dataset registry: ``build_dataset(name, split=...)`` and ``dataset_info(name)``.

Registered: ``cifar10``, ``cifar100`` (:mod:`maxup.data.cifar`), ``imagenet``
(:mod:`maxup.data.imagenet`), ``fashion_mnist`` (:mod:`maxup.data.fashion_mnist`),
``digits`` (:mod:`maxup.data.digits`), ``synthetic`` (:mod:`maxup.data.synthetic`); the
corpora ``ptb``, ``wikitext2`` and ``kjv`` (:mod:`maxup.data.corpus`, kind ``"text"``).
Nothing is downloaded unless ``download=True``.
"""

from maxup.data import cifar, corpus, digits, fashion_mnist, imagenet, synthetic  # noqa: F401
from maxup.data.registry import (
    DatasetInfo,
    build_dataset,
    dataset_info,
    list_datasets,
    register_dataset,
)
from maxup.data.tensor import TensorImageDataset

__all__ = [
    "DatasetInfo",
    "TensorImageDataset",
    "build_dataset",
    "dataset_info",
    "list_datasets",
    "register_dataset",
]
