"""Benchmark: load N synthetic trial records and render every table they fill.

Generates N records (default 10,000) spread over Tables 3, 4, 5 and 8 and many seeds, in the
real layout (``<sweep>/records/<trial_id>.json``), then times ``load_records`` + ``tables_for``
+ ``render`` (Markdown, LaTeX and CSV of every table): one warm-up, then the median of R runs.
Target: < 3 s for 10,000 records.

    .venv/bin/python benchmarks/bench_analysis.py [--n 10000] [--repeats 5] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time

RADII = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5]


def _config(seed, model, dataset, m, ops, certify):
    return {
        "seed": seed,
        "model": {"name": model, "num_classes": 100 if dataset == "cifar100" else 10,
                  "dropout": 0.0, "weights": None},
        "data": {"name": dataset, "root": "/data", "subset": None, "download": False,
                 "num_workers": 4, "train_transform": "standard"},
        "augment": {"ops": ops, "sigma": 0.25, "cutout_size": 16, "cutmix_alpha": 1.0,
                    "mixup_alpha": 1.0, "crop_padding": 4},
        "maxup": {"m": m, "mode": "efficient", "bn": "batch_stats", "warmup_epochs": 5,
                  "chunk": None},
        "optim": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
                  "schedule": "multistep", "milestones": [100, 150], "gamma": 0.1},
        "train": {"epochs": 200, "batch_size": 256, "eval_batch_size": 1024,
                  "device": "cuda", "precision": "bf16", "channels_last": True,
                  "checkpoint_every": 10, "workers": 4, "min_workers": 2,
                  "start_timeout_s": 600, "progress": False},
        "certify": {"enabled": certify, "sigma": 0.25, "n0": 100, "n": 100000,
                    "alpha": 0.001, "skip": 20, "batch": 400},
    }


def _record(i, rng, table, epochs):
    seed = i
    if table in ("3", "4"):
        model = ("resnet110", "preact_resnet110", "wrn28_10")[i % 3]
        m = (1, 10)[(i // 3) % 2]
        dataset, ops, cert = ("cifar10" if table == "3" else "cifar100"), ["crop_flip",
                                                                          "cutout"], False
    elif table == "5":
        model = ("resnet110", "wrn28_10")[i % 2]
        m = (1, 4, 10, 20)[(i // 2) % 4]
        dataset, ops, cert = "cifar100", ["crop_flip", "cutout"], False
    else:
        model, m = "resnet110", (1, 4, 10)[i % 3]
        dataset, ops, cert = "cifar10", ["gaussian"], True
    cfg = _config(seed, model, dataset, m, ops, cert)
    acc = 90.0 + rng.gauss(0, 0.2) + (0.5 if m > 1 else 0.0)
    history = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": acc - 5 + e / epochs,
                "test_loss": 1.5 / e, "test_acc": acc - (epochs - e) * 0.1, "test_top5": 99.0,
                "lr": 0.1, "maxup_active": m > 1 and e > 5, "maxup_gap": 0.1,
                "maxup_wins": [1] * m, "wall_s": 30.0, "selection_s": 2.0,
                "images_per_s": 2000.0} for e in range(1, epochs + 1)]
    certification = None
    if cert:
        certification = {"sigma": 0.25, "n0": 100, "n": 100000, "alpha": 0.001, "skip": 20,
                         "batch": 400, "radii": RADII,
                         "certified_accuracy": [max(0.0, 75 - 6 * k + rng.gauss(0, 1))
                                                for k in range(11)],
                         "rows": [{"index": 20 * j, "label": j % 10, "prediction": j % 10,
                                   "radius": 0.5, "correct": True, "seconds": 1.2}
                                  for j in range(50)]}
    trial_id = f"{i:012x}"
    return {
        "schema": "maxup.trial/1", "sweep": f"table{table}", "trial_id": trial_id,
        "status": "completed", "config": cfg, "seed": seed,
        "axes": {"maxup.m": m, "model.name": model, "seed": seed}, "paper_table": table,
        "final": history[-1], "best": dict(history[-1]), "history": history,
        "timings": {"wall_s": 6000.0, "train_s": 5000.0, "eval_s": 500.0,
                    "selection_s": 300.0, "selection_share": 0.05, "images_per_s": 2000.0},
        "environment": {"maxup": "0.1.0", "torch": "2.14.1", "ray": "2.60.0",
                        "python": "3.11", "git_commit": None, "device": "cuda",
                        "workers": 4, "hostname": "node"},
        "failure": None, "certification": certification,
        "created": "2026-01-01T00:00:00Z", "updated": "2026-01-01T02:00:00Z",
    }


def generate(root: str, n: int, epochs: int) -> int:
    """Write n records spread over Tables 3, 4, 5 and 8; return the bytes written."""
    rng = random.Random(0)
    total = 0
    tables = ("3", "4", "5", "8")
    for i in range(n):
        rec = _record(i // len(tables), rng, tables[i % len(tables)], epochs)
        rec["trial_id"] = f"{i:012x}"
        d = os.path.join(root, rec["sweep"], "records")
        os.makedirs(d, exist_ok=True)
        text = json.dumps(rec)
        total += len(text)
        with open(os.path.join(d, rec["trial_id"] + ".json"), "w") as fh:
            fh.write(text)
    return total


def run_once(root: str) -> tuple[float, float, float, int, int]:
    """Wall seconds (total, load only), process CPU seconds, rows, tables."""
    from maxup.analysis import load_records, render, tables_for

    t0, c0 = time.perf_counter(), time.process_time()
    df = load_records(root)
    t_load = time.perf_counter() - t0
    tables = tables_for(df)
    for t in tables:
        for fmt in ("md", "latex", "csv"):
            render(t, fmt)
    return time.perf_counter() - t0, t_load, time.process_time() - c0, len(df), len(tables)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20, help="history length per record")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        size = generate(root, args.n, args.epochs)
        print(f"generated {args.n} records ({size / 1e6:.1f} MB, {args.epochs} history epochs "
              f"each) in {time.perf_counter() - t0:.1f} s")
        run_once(root)  # warm-up (imports, page cache)
        times, loads, cpus = [], [], []
        for _ in range(args.repeats):
            dt, dl, cpu, n_rows, n_tables = run_once(root)
            times.append(dt)
            loads.append(dl)
            cpus.append(cpu)
        med = statistics.median(times)
        print(f"n={n_rows} records, {n_tables} tables rendered as md+latex+csv")
        print(f"load + render all tables: median {med:.3f} s over {args.repeats} runs "
              f"(min {min(times):.3f}, max {max(times):.3f}); target < 3 s: "
              f"{'PASS' if med < 3 else 'FAIL'}")
        print(f"  of which load_records: median {statistics.median(loads):.3f} s; process CPU "
              f"time per run: median {statistics.median(cpus):.3f} s")
        print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
