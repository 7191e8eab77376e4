"""What a fresh process pays before it trains: imports and the digits split.

Every sweep trial, Ray Train worker and CLI command is a new Python process, so its start-up
is paid once per trial (and per test that starts one). Each case below runs in its own fresh
interpreter, all cases in turn ``--reps`` times (round robin, so a changing load hits them
alike); the table gives the median wall time and the median CPU time (user + system of the
child) per case.

Cases:
- ``torch``: ``import torch``, the floor of any process that trains;
- ``maxup registries``: ``import maxup.data, maxup.models`` (the registries a trial imports);
- ``… + torchvision``: the same plus ``import torchvision``, what registering cost while the
  CIFAR/ImageNet modules imported torchvision at import time;
- ``digits (CSV)``: build the digits train and test splits as :mod:`maxup.data.digits` does;
- ``digits (sklearn)``: ``load_digits`` + ``train_test_split`` + tensors, what it used to do.

``--sweep`` also runs ``maxup sweep`` of two one-epoch digits trials on an embedded local Ray
``--sweep-reps`` times and reports wall time and the whole machine's busy CPU time (from
``/proc/stat``: Ray's daemons and the trial workers are not children this process can time).

    python benchmarks/bench_startup.py --reps 5 --sweep
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_description  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "torch": "import torch",
    "maxup registries": "import maxup.data, maxup.models",
    "maxup registries + torchvision": "import maxup.data, maxup.models, torchvision",
    "digits (CSV)": textwrap.dedent("""\
        from maxup.data import build_dataset
        for split in ("train", "test"):
            build_dataset("digits", split=split)"""),
    "digits (sklearn)": textwrap.dedent("""\
        import torch
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        d = load_digits()
        parts = train_test_split(d.data, d.target, test_size=0.3, random_state=0,
                                 stratify=d.target)
        [torch.as_tensor(p) for p in parts]"""),
}

SPACE = """\
name: startup
base:
  model: {name: mlp}
  data: {name: digits}
  augment: {ops: [gaussian], sigma: 0.3}
  maxup: {m: 1, warmup_epochs: 0}
  train: {epochs: 1, batch_size: 64, device: cpu, progress: false}
seeds: 2
resources: {cpus_per_trial: 1}
concurrency: 2
grid: {maxup.m: [1]}
"""


def run_child(code: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``python -c code`` in a fresh interpreter."""
    before = os.times()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system
                                                          - before.children_system)
    return wall, cpu


def busy_cpu_s() -> float:
    """Busy CPU seconds of the whole machine since boot (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def run_sweep(storage: Path) -> tuple[float, float]:
    """(wall, machine busy CPU) seconds of one two-trial ``maxup sweep``."""
    space = storage.parent / "startup.yaml"
    space.write_text(SPACE)
    c0, t0 = busy_cpu_s(), time.perf_counter()
    subprocess.run([sys.executable, "-m", "maxup", "sweep", str(space), "--storage",
                    str(storage), "--no-table"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, env=dict(os.environ, RAY_ADDRESS=""))
    return time.perf_counter() - t0, busy_cpu_s() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="fresh processes per case")
    ap.add_argument("--sweep", action="store_true", help="also time a two-trial sweep")
    ap.add_argument("--sweep-reps", type=int, default=3)
    args = ap.parse_args()

    times: dict[str, list[tuple[float, float]]] = {name: [] for name in CASES}
    for _ in range(args.reps):
        for name, code in CASES.items():
            times[name].append(run_child(code))
    print(f"machine: {machine_description()}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print("\n| case | n | wall median (s) | CPU median (s) |\n|---|---:|---:|---:|")
    for name, runs in times.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"| {name} | {len(runs)} | {wall:.2f} | {cpu:.2f} |")
    if args.sweep:
        runs = []
        for _ in range(args.sweep_reps):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(run_sweep(Path(tmp) / "st"))
        print(f"\ntwo-trial sweep, n = {len(runs)}: wall median "
              f"{statistics.median(w for w, _ in runs):.1f} s, machine busy CPU median "
              f"{statistics.median(c for _, c in runs):.1f} s "
              f"(all: {', '.join(f'{w:.1f}/{c:.1f}' for w, c in runs)})")


if __name__ == "__main__":
    main()
