"""Deterministic training (``train.deterministic``): what it sets, and what each device promises.

A trial id promises that a trial is a function of its config. The engine keeps every source of
randomness seeded from (seed, epoch, rank), so what remains is the arithmetic itself:

- **CUDA**: several kernels (cuDNN's convolution backward, atomics in scatter/index ops, cuBLAS
  with more than one workspace stream) sum in an order that varies from run to run, and cuDNN
  picks algorithms by benchmarking or by free memory (which depends on what else runs on the
  card). Deterministic mode turns on ``torch.use_deterministic_algorithms`` (an op without a
  deterministic implementation then raises instead of silently varying), pins cuDNN to
  deterministic algorithms without benchmarking, and sets ``CUBLAS_WORKSPACE_CONFIG`` (cuBLAS
  reads it when its handle is created, so it is set before the first CUDA use of the process
  where that is possible). Promise: the same config, code, torch/CUDA/cuDNN versions and GPU
  model give bit-identical training.
- **CPU**: PyTorch's CPU kernels split reductions statically by thread count, so a run is
  bit-identical run to run for the same code, torch build, CPU instruction set and number of
  torch threads (the record stores it; ``maxup verify`` reruns with it). Deterministic mode
  sets the same flags (they cost nothing on the CPU and make a non-deterministic op refuse).

Not promised by anyone: equality across devices, torch versions or thread counts.
:func:`deterministic_mode` restores the process's previous settings on exit, as ``train``
restores the global generators.
"""

from __future__ import annotations

import contextlib
import os

import torch

#: cuBLAS's deterministic workspace setting (one of the two values NVIDIA documents).
CUBLAS_WORKSPACE_CONFIG = ":4096:8"
_CUBLAS_VAR = "CUBLAS_WORKSPACE_CONFIG"
_DETERMINISTIC_VALUES = (":4096:8", ":16:8")


class NondeterministicOperation(RuntimeError):
    """An operation with no deterministic implementation on this device was used while
    ``train.deterministic`` is on. The message is one line naming the operation."""


def prepare_cuda_environment() -> None:
    """Set ``CUBLAS_WORKSPACE_CONFIG`` unless the user chose a deterministic value already.

    Call before CUDA is first used in the process (cuBLAS reads it when a handle is created).
    """
    if os.environ.get(_CUBLAS_VAR) not in _DETERMINISTIC_VALUES:
        os.environ[_CUBLAS_VAR] = CUBLAS_WORKSPACE_CONFIG


def guarantee(device: torch.device, enabled: bool) -> str:
    """One sentence: what a run on ``device`` with deterministic mode ``enabled`` promises."""
    if not enabled:
        if device.type == "cuda":
            return ("not deterministic: cuDNN/cuBLAS may sum in another order on each run; "
                    "reruns agree only approximately")
        return ("CPU: bit-identical for the same code, torch build, CPU and thread count "
                "(deterministic flags off)")
    if device.type == "cuda":
        return ("bit-identical for the same code, torch/CUDA/cuDNN versions and GPU model")
    return "bit-identical for the same code, torch build, CPU and thread count"


@contextlib.contextmanager
def deterministic_mode(enabled: bool, device: torch.device):
    """Run the block with deterministic algorithms on (``enabled``) or as the process had them.

    On exit the process's previous settings come back, also when the block raises. A torch
    error about an operation without a deterministic implementation is re-raised as
    :class:`NondeterministicOperation`, one line naming ``train.deterministic``.

    Args:
        enabled: the config's ``train.deterministic``.
        device: the training device; on CUDA the cuBLAS workspace variable is set too.
    """
    if not enabled:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if device.type == "cuda":
        prepare_cuda_environment()
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    except RuntimeError as exc:
        text = str(exc)
        if "deterministic" in text and not isinstance(exc, NondeterministicOperation):
            first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
            raise NondeterministicOperation(
                f"train.deterministic: got true, but {first}; allowed: false for this "
                f"config on {device.type}") from exc
        raise
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic = saved[2]
        torch.backends.cudnn.benchmark = saved[3]
