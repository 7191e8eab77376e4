"""Seeds and generator states: every source of randomness is re-seeded from integers, so a run
is a function of its config and resumes exactly."""

from __future__ import annotations

import contextlib
import hashlib
import random

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_everything(seed: int, device: torch.device | None = None) -> None:
    """Seed the global Python, NumPy and torch CPU generators, and ``device``'s if CUDA.

    Args:
        seed: a non-negative integer (NumPy takes it modulo 2**32).
        device: the training device; for a CUDA device its generator is seeded too.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    # Not torch.manual_seed: it also seeds every CUDA device (lazily, at CUDA's first use,
    # when CUDA is not initialised yet), which train() could then not give back to its caller.
    torch.default_generator.manual_seed(seed)
    if device is not None and device.type == "cuda":
        torch.cuda.default_generators[_cuda_index(device)].manual_seed(seed)


def _cuda_index(device: torch.device) -> int:
    """The index of a CUDA device (``cuda`` alone means the current one); initialises CUDA."""
    torch.cuda.init()  # the generators exist only once CUDA is initialised
    return device.index if device.index is not None else torch.cuda.current_device()


def rng_states(device: torch.device) -> dict:
    """The global generators' states: Python's ``random``, NumPy's legacy global generator,
    torch's CPU generator and, for a CUDA ``device``, that device's generator; as plain values
    and tensors (a checkpoint holds them and loads with ``weights_only=True``).

    Args:
        device: the device the code runs on; a CUDA device's generator is included.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, cached),
           "torch": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(_cuda_index(device))
    return out


def set_rng_states(states: dict, device: torch.device) -> None:
    """Put back the global generators' states :func:`rng_states` returned."""
    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], _cuda_index(device))


@contextlib.contextmanager
def global_rng_preserved(device: torch.device):
    """Run the block, then put the global RNG states (:func:`rng_states`) back as they were on
    entry, also when the block raises.

    Args:
        device: the device the code inside runs on; a CUDA device's generator is restored too.
    """
    states = rng_states(device)
    try:
        yield
    finally:
        set_rng_states(states, device)


def seed_worker(worker_id: int) -> None:
    """A DataLoader worker's ``worker_init_fn``: seed NumPy and ``random`` from torch's seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
