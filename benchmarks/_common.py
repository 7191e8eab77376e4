"""Small timing and memory helpers shared by the benchmarks.

- :func:`time_once` / :func:`median_time`: seconds of one call, and the median over repetitions
  after warm-up; wall clock (``perf_counter``) or, on a GPU, CUDA events.
- :func:`current_rss_mib` / :func:`peak_rss_mib`: resident memory of this process now (from
  ``/proc/self/statm``) and its high-water mark (``resource.getrusage(RUSAGE_SELF).ru_maxrss``).
  Peak memory of one configuration is measured by running it in a fresh process and reporting
  ``peak_rss_mib()`` after the steps minus ``current_rss_mib()`` just before the first step:
  the extra resident memory the steps needed on top of the model, data and imports. (torch's
  CPU allocator is invisible to ``tracemalloc``; RSS sees everything, including glibc caches.)
- :func:`round_robin`: the step benchmarks' timing, every configuration stepped in turn so a
  changing load hits them alike; :func:`peak_extra_mib`: their per-configuration peak memory.
- :func:`machine_description`: one line naming the CPU, core count, threads and versions.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable


def time_once(fn: Callable[[], object], *, cuda_events: bool = False) -> float:
    """Seconds one call of ``fn()`` takes.

    Args:
        fn: the work to time (no arguments).
        cuda_events: time on the current CUDA stream with CUDA events (recorded before and after
            the call, then synchronised): the device's own clock, including any idle time the
            device spends waiting for the host inside the call. Otherwise ``perf_counter``
            (on CPU torch is synchronous; on GPU ``fn`` must then synchronise itself).
    """
    if not cuda_events:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    import torch

    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def median_time(fn: Callable[[], object], reps: int = 5, warmup: int = 1, *,
                cuda_events: bool = False) -> tuple[float, int, list[float]]:
    """Median seconds of ``fn()`` over ``reps`` timed calls after ``warmup`` untimed ones.

    Args:
        fn: the work to time (no arguments); see :func:`time_once` for what is timed.
        reps: timed repetitions (the median is robust to a few slow outliers).
        warmup: untimed calls first (allocator, thread pool and kernel-selection warm-up).
        cuda_events: time each call with CUDA events (:func:`time_once`).

    Returns:
        (median seconds, number of timed repetitions, all timed durations in seconds).
    """
    for _ in range(warmup):
        fn()
    times = [time_once(fn, cuda_events=cuda_events) for _ in range(reps)]
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


def round_robin(steps: dict[str, Callable[[], float]], reps: int) -> dict[str, dict]:
    """Time every step in turn, ``1 + reps`` rounds, the first a warm-up; per step the median,
    min, max and every timed ms, and the median of the seconds each call returns (its
    selection time).

    Args:
        steps: name → a no-argument training step returning its selection seconds.
        reps: timed rounds.
    """
    times: dict[str, list[float]] = {name: [] for name in steps}
    selection: dict[str, list[float]] = {name: [] for name in steps}
    for rnd in range(1 + reps):
        for name, step in steps.items():
            t0 = time.perf_counter()
            sel = step()
            if rnd > 0:  # round 0 is the warm-up
                times[name].append(time.perf_counter() - t0)
                selection[name].append(sel)
    return {name: {"median_ms": statistics.median(t) * 1e3, "n": len(t),
                   "min_ms": min(t) * 1e3, "max_ms": max(t) * 1e3,
                   "selection_ms": statistics.median(selection[name]) * 1e3,
                   "all_ms": [x * 1e3 for x in t]}
            for name, t in times.items()}


def peak_extra_mib(step: Callable[[], object]) -> float:
    """Peak RSS (MiB) one warm-up and one measured call of ``step`` add to this process (run it
    in a fresh process per configuration: the high-water mark never comes down)."""
    rss0 = current_rss_mib()
    step()
    step()
    return peak_rss_mib() - rss0
