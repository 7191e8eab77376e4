"""Small timing and memory helpers shared by the benchmarks.

- :func:`median_time`: median wall-clock seconds of a callable over repetitions, after warm-up.
- :func:`current_rss_mib` / :func:`peak_rss_mib`: resident memory of this process now (from
  ``/proc/self/statm``) and its high-water mark (``resource.getrusage(RUSAGE_SELF).ru_maxrss``).
  Peak memory of one configuration is measured by running it in a fresh process and reporting
  ``peak_rss_mib()`` after the steps minus ``current_rss_mib()`` just before the first step:
  the extra resident memory the steps needed on top of the model, data and imports. (torch's
  CPU allocator is invisible to ``tracemalloc``; RSS sees everything, including glibc caches.)
- :func:`machine_description`: one line naming the CPU, core count, threads and versions.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable


def median_time(fn: Callable[[], object], reps: int = 5, warmup: int = 1) -> tuple[float, int,
                                                                                  list[float]]:
    """Median seconds of ``fn()`` over ``reps`` timed calls after ``warmup`` untimed ones.

    Args:
        fn: the work to time (no arguments); it must finish its own computation (on CPU torch
            is synchronous; on GPU call ``torch.cuda.synchronize()`` inside ``fn``).
        reps: timed repetitions (the median is robust to a few slow outliers).
        warmup: untimed calls first (allocator, thread pool and kernel-selection warm-up).

    Returns:
        (median seconds, number of timed repetitions, all timed durations in seconds).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times), times


def current_rss_mib() -> float:
    """Resident set size of this process now, MiB (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """High-water mark of this process's resident set size, MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_description(threads: int | None = None) -> str:
    """One line: CPU model, logical cores, torch threads (if given), Python and torch versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [cpu, f"{os.cpu_count()} logical cores"]
    if threads is not None:
        parts.append(f"{threads} torch threads")
    parts.append(f"Python {platform.python_version()}")
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)
