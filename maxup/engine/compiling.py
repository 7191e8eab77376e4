"""``train.compile``: the image model under ``torch.compile``, and how long compiling took.

The compiled module shares its parameters with the model it wraps, so checkpoints, resume and
evaluation see the same weights; the loop checkpoints the uncompiled module (its
``state_dict`` keys carry no ``_orig_mod.`` prefix). Compiling happens lazily at the first call
of each new input shape or mode (training, the no-grad selection pass with BatchNorm running
statistics frozen, evaluation); its seconds are reported per epoch as ``compile_s``, apart from
the epoch's other timings, which include them.
"""

from __future__ import annotations

import torch
import torch.nn as nn

#: The top-level entries of torch's compile-time log: tracing and code generation of each
#: graph (forward included), and the backward graph compiled at the first backward.
_TOP_LEVEL = ("_compile.compile_inner", "backward._backward_impl")


def compile_model(model: nn.Module, mode: str = "default") -> nn.Module:
    """``model`` under ``torch.compile`` (inductor; shapes specialised, then dynamic once a
    second batch size appears — torch's default).

    Args:
        model: the module; the compiled one shares its parameters.
        mode: ``train.compile_mode``: ``default``, ``reduce-overhead`` (CUDA graphs as well: a
            launch-bound network replays each step's kernels at once) or ``max-autotune``.
    """
    return torch.compile(model, mode=None if mode == "default" else mode)


def compile_seconds() -> float:
    """Seconds this process has spent compiling so far (0.0 where torch does not say)."""
    try:
        from torch._dynamo.utils import compilation_time_metrics
    except ImportError:  # an internal log: absent in some torch builds
        return 0.0
    return float(sum(sum(compilation_time_metrics.get(key, ())) for key in _TOP_LEVEL))
