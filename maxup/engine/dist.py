"""Where this process trains: its data-parallel rank and device, and the one collective the
loop needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maxup.errors import UsageError


@dataclass
class DistContext:
    """Which data-parallel process this is. ``world_size == 1``: a plain process."""

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a UsageError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("train.device: got 'cuda' but no CUDA device is visible; allowed: "
                         "auto, cpu")
    return torch.device(name)


def all_reduce_sum(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sum ``t`` over all ranks and return it on the CPU.

    NCCL reduces only CUDA tensors (a CPU tensor raises "No backend type associated with
    device type cpu"), so the tensor travels to ``device`` for the collective.
    """
    moved = t.to(device)
    torch.distributed.all_reduce(moved)
    return moved.cpu()
