"""Batches of an epoch: one seeded permutation shared by all ranks, each rank its shard.

A tensor-backed dataset (``.images`` and ``.labels``, no transform) is sliced directly, on
whatever device its tensors live: :func:`device_resident` moves a dataset that fits to the GPU
once, and batches are then gathered there by the same indices, in the same order.
"""

from __future__ import annotations

import math

import torch

from maxup.engine.rng import seed_worker


class Batches:
    """Iterate one epoch of (images, labels) batches of a rank's shard.

    All ranks draw the same permutation from the epoch seed and take every world_size-th index,
    truncated to equal length (so DDP ranks run the same number of steps). Tensor-backed
    datasets are sliced directly; others go through a DataLoader with seeded workers.
    """

    def __init__(self, dataset, batch_size: int, *, seed: int, rank: int, world: int,
                 num_workers: int):
        self.dataset, self.batch_size = dataset, batch_size
        n = len(dataset)
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=g)
        per_rank = n // world
        self.indices = perm[rank::world][:per_rank]
        self.seed, self.num_workers = seed, num_workers
        self._tensors = tensor_backed(dataset)

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __iter__(self):
        ds = self.dataset
        if self._tensors:
            indices = self.indices.to(ds.images.device)  # one copy per epoch, not per batch
            for start in range(0, len(indices), self.batch_size):
                idx = indices[start:start + self.batch_size]
                yield ds.images[idx], ds.labels[idx]
            return
        sampler = self.indices.tolist()
        loader = torch.utils.data.DataLoader(
            ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
            worker_init_fn=seed_worker, persistent_workers=False,
        )
        yield from loader


def eval_batches(dataset, batch_size: int, rank: int, world: int):
    """Evaluation batches of a rank's shard (every ``world``-th example, in order)."""
    n = len(dataset)
    idx = torch.arange(rank, n, world)
    if tensor_backed(dataset):
        idx = idx.to(dataset.images.device)
        for s in range(0, len(idx), batch_size):
            j = idx[s:s + batch_size]
            yield dataset.images[j], dataset.labels[j]
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=idx.tolist())
    yield from loader


def tensor_backed(dataset) -> bool:
    """Whether batches can be sliced from ``dataset.images`` / ``.labels`` directly (tensors,
    no per-item transform)."""
    return (isinstance(getattr(dataset, "images", None), torch.Tensor)
            and isinstance(getattr(dataset, "labels", None), torch.Tensor)
            and not getattr(dataset, "transform", None))


#: At most this share of the device's free memory goes to a resident dataset (the rest is the
#: model's, the selection pass's and the allocator's).
RESIDENT_SHARE = 0.25


def device_resident(dataset, device: torch.device):
    """``dataset`` with its tensors on ``device``, moved once, when that is a CUDA device, the
    dataset is tensor-backed and has a ``to`` method, and its tensors take at most
    :data:`RESIDENT_SHARE` of the device's free memory; otherwise ``dataset`` itself (batches
    then travel per step as before). The values, and so the batches, are the same either way.

    Args:
        dataset: a dataset (e.g. :class:`~maxup.data.tensor.TensorImageDataset`).
        device: the training device.
    """
    if device.type != "cuda" or not tensor_backed(dataset) or not hasattr(dataset, "to"):
        return dataset
    size = dataset.images.nbytes + dataset.labels.nbytes
    free, _total = torch.cuda.mem_get_info(device)
    return dataset.to(device) if size <= RESIDENT_SHARE * free else dataset
