"""Batches of an epoch: one seeded permutation shared by all ranks, each rank its shard."""

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

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __iter__(self):
        ds = self.dataset
        if hasattr(ds, "images") and hasattr(ds, "labels") and not getattr(ds, "transform", None):
            for start in range(0, len(self.indices), self.batch_size):
                idx = self.indices[start:start + self.batch_size]
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
    if hasattr(dataset, "images") and hasattr(dataset, "labels"):
        for s in range(0, len(idx), batch_size):
            j = idx[s:s + batch_size]
            yield dataset.images[j], dataset.labels[j]
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=idx.tolist())
    yield from loader
