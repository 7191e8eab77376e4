"""Throughput of 1 vs 2 data-parallel Ray Train workers, and the fixed cost of a Train run.

Usage: ``.venv/bin/python benchmarks/bench_distributed.py [--reps 3] [--epochs 3]``

Workload: Fashion-MNIST (a ``--subset`` of the training set; synthetic data when the files
are missing), ``small_cnn``, MaxUp m = 4 with Gaussian noise, global batch 64. Three layouts
on the same machine and the same global batch:

- ``plain``: ``maxup.engine.train`` in this process (no Ray), torch threads = all cores;
- ``ray-1x``: ``train_distributed`` with 1 worker holding all cores (threads = cores);
- ``ray-2x``: ``train_distributed`` with 2 workers of cores/2 CPUs each (gloo DDP).

Each layout runs ``--reps`` times (fresh ``out_dir``; Ray started once for all Ray runs).
Throughput is training images/s of the epochs after the first (the engine's per-epoch
``images_per_s``: training only, no evaluation), median over all such epochs of all reps.
Fixed cost of a Ray Train run: ``start`` = from ``fit()`` to the start of epoch 1 (controller,
placement group, worker processes, process group, dataset and model build), found as the time
``metrics.jsonl`` first appears minus epoch 1's ``wall_s``; ``total overhead`` = ``fit()``
wall minus the sum of the epochs' ``wall_s`` (start, report polling and teardown). Medians
over the reps. The last printed line holds the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path

from _common import machine_description

FASHION = "/usr/share/datasets/fashion-mnist"


def config(args, workers: int) -> dict:
    """The benchmark's run config for ``workers`` data-parallel workers."""
    have_fashion = Path(FASHION, "train-images-idx3-ubyte.gz").exists()
    data = ({"name": "fashion_mnist", "subset": args.subset} if have_fashion
            else {"name": "synthetic"})
    return {"seed": 0, "model": {"name": "small_cnn"}, "data": data,
            "augment": {"ops": ["gaussian"], "sigma": 0.25}, "maxup": {"m": 4},
            "optim": {"lr": 0.05, "schedule": "constant"},
            "train": {"epochs": args.epochs, "batch_size": 64, "eval_batch_size": 1000,
                      "device": "cpu", "progress": False, "workers": workers,
                      "checkpoint_every": args.epochs}}


def _watch_first_epoch(path: Path, box: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        if path.exists():
            box["t"] = time.perf_counter()
            return
        time.sleep(0.01)


def run_ray(args, workers: int, out: Path) -> dict:
    """One Ray Train run; returns its throughputs and fixed costs."""
    from maxup.platform.distributed import train_distributed

    cores = os.cpu_count() or 1
    box, stop = {}, threading.Event()
    watcher = threading.Thread(target=_watch_first_epoch,
                               args=(out / "metrics.jsonl", box, stop), daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    rec = train_distributed(config(args, workers), out, resume=False,
                            cpus_per_worker=max(1, cores // workers))
    wall = time.perf_counter() - t0
    stop.set()
    hist = rec["history"]
    first_epoch_start = box.get("t", float("nan")) - hist[0]["wall_s"]
    return {"ips": [h["images_per_s"] for h in hist[1:]],
            "start_s": first_epoch_start - t0,
            "overhead_s": wall - sum(h["wall_s"] for h in hist), "wall_s": wall}


def run_plain(args, out: Path) -> dict:
    """One in-process engine run (no Ray)."""
    import torch

    from maxup.engine import train

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    rec = train(config(args, 1), out, resume=False, log=None)
    wall = time.perf_counter() - t0
    hist = rec["history"]
    return {"ips": [h["images_per_s"] for h in hist[1:]], "start_s": float("nan"),
            "overhead_s": wall - sum(h["wall_s"] for h in hist), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--subset", type=int, default=1000)
    args = parser.parse_args()
    import shutil
    import tempfile

    import ray

    from maxup.platform.distributed import start_local_ray

    root = Path(tempfile.mkdtemp(prefix="maxup-bench-distributed-"))
    load0 = os.getloadavg()
    results: dict[str, list[dict]] = {"plain": [], "ray-1x": [], "ray-2x": []}
    for r in range(args.reps):
        results["plain"].append(run_plain(args, root / f"plain-{r}"))
    start_local_ray()
    try:
        for r in range(args.reps):  # interleaved so load drifts hit both layouts alike
            results["ray-1x"].append(run_ray(args, 1, root / f"ray1-{r}"))
            results["ray-2x"].append(run_ray(args, 2, root / f"ray2-{r}"))
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    load1 = os.getloadavg()

    cores = os.cpu_count() or 1
    cfg = config(args, 1)
    data = cfg["data"]["name"] + (f" subset {args.subset}" if "subset" in cfg["data"] else "")
    print(f"# Data-parallel throughput and Ray Train fixed cost ({data}, small_cnn, m=4, "
          f"global batch 64, {args.epochs} epochs/run)")
    print(f"machine: {machine_description()}; load average {load0[0]:.1f} before, "
          f"{load1[0]:.1f} after")
    print()
    print("| layout | CPUs x workers | train images/s (median) | n epochs | "
          "start to epoch 1 (s) | fit overhead (s) | run wall (s) | n runs |")
    print("|---|---|---|---|---|---|---|---|")
    med = {}
    layout_desc = {"plain": f"{cores} x 1 (no Ray)", "ray-1x": f"{cores} x 1",
                   "ray-2x": f"{max(1, cores // 2)} x 2"}
    for name, runs in results.items():
        ips = [v for run in runs for v in run["ips"]]
        med[name] = {"ips": statistics.median(ips),
                     "start": statistics.median(r["start_s"] for r in runs),
                     "overhead": statistics.median(r["overhead_s"] for r in runs),
                     "wall": statistics.median(r["wall_s"] for r in runs)}
        m = med[name]
        start = "—" if m["start"] != m["start"] else f"{m['start']:.1f}"
        print(f"| {name} | {layout_desc[name]} | {m['ips']:.0f} | {len(ips)} | {start} | "
              f"{m['overhead']:.1f} | {m['wall']:.1f} | {len(runs)} |")
    print()
    print("ratios: " + json.dumps({
        "ray2x_over_ray1x_images_per_s": round(med["ray-2x"]["ips"] / med["ray-1x"]["ips"], 3),
        "ray2x_over_plain_images_per_s": round(med["ray-2x"]["ips"] / med["plain"]["ips"], 3),
        "ray1x_over_plain_images_per_s": round(med["ray-1x"]["ips"] / med["plain"]["ips"], 3),
        "ray_start_to_epoch1_s": round(med["ray-2x"]["start"], 2),
        "ray2x_fit_overhead_s": round(med["ray-2x"]["overhead"], 2),
    }))


if __name__ == "__main__":
    main()
