"""Certification throughput: noisy samples per second of ``sample_noise_counts`` on this machine.

Runs ``small_cnn`` (1x28x28, 10 classes) and ``resnet20`` (3x32x32, 10 classes) at batch sizes
100/400/1000; each cell is the median of REPS timed calls after one warm-up call, each call
drawing N noisy samples of one image (noise + forward + argmax + count, exactly the work of
CERTIFY). Prints a Markdown table and the machine. Untrained weights: throughput does not
depend on them.

Usage: ``python benchmarks/bench_certify.py [--reps 5] [--device cpu]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from maxup.certify import sample_noise_counts
from maxup.models import build_model

CASES = [
    # model, (C, H, W), samples per timed call
    ("small_cnn", (1, 28, 28), 2000),
    ("resnet20", (3, 32, 32), 1000),
]
BATCHES = [100, 400, 1000]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _loadavg() -> str:
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def bench(name: str, shape: tuple[int, int, int], num: int, batch: int, reps: int,
          device: torch.device) -> list[float]:
    """Samples/s of ``reps`` timed calls (after one warm-up) drawing ``num`` samples each."""
    c = shape[0]
    model = build_model(name, num_classes=10, in_channels=c, mean=[0.5] * c, std=[0.25] * c,
                        image_size=shape[1:]).to(device).eval()
    x = torch.rand(shape, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    rates = []
    for rep in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        counts = sample_noise_counts(model, x, num, 0.25, 10, batch, gen)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        assert int(counts.sum()) == num
        if rep > 0:  # rep 0 is the warm-up
            rates.append(num / dt)
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    t_start = time.perf_counter()
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"machine: processor={platform.processor()!r} ({_cpu_model()}), "
          f"torch {torch.__version__}, threads={torch.get_num_threads()}, device={dev}, "
          f"load average at start {_loadavg()}")
    print()
    print("| model | input | batch | samples/s (median) | min | max | n (reps x samples) |")
    print("|---|---|---:|---:|---:|---:|---|", flush=True)
    for name, shape, num in CASES:
        for batch in BATCHES:
            rates = bench(name, shape, num, batch, args.reps, device)
            print(f"| {name} | {'x'.join(map(str, shape))} | {batch} | "
                  f"{statistics.median(rates):,.0f} | {min(rates):,.0f} | {max(rates):,.0f} | "
                  f"{len(rates)} x {num} |", flush=True)
    print()
    print(f"load average at end {_loadavg()}")
    print(f"total wall time {time.perf_counter() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
