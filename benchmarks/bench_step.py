"""Time and peak memory of one MaxUp training step vs. ERM on a CIFAR-size ResNet-20 (CPU).

Usage: ``.venv/bin/python benchmarks/bench_step.py [--reps 5] [--threads 2]``

Every configuration runs in a fresh subprocess (``--one NAME``) so that its peak memory is its
own: peak = ``ru_maxrss`` after the steps minus the resident size just before the first step
(see ``benchmarks/_common.py``). A step is augmentation + loss + backward + SGD step on a fixed
batch of 128 random 3x32x32 images, 10 classes, augmentation crop_flip+cutout (padding 4,
Cutout 16). Time is the median of ``--reps`` steps after one warm-up step.

Configurations: ``erm`` (MaxUp m = 1, i.e. standard augmentation training); ``fwd`` (one
no-grad forward of the batch with BN in batch-stats mode, as in the selection pass);
``naive-mM`` (forward and backward of all m·B copies); ``efficient-mM`` (no-grad selection of
all m·B copies in one pass, then one training step on the B worst); ``efficient-mM-chunk1``
(selection one copy, i.e. B images, per forward). The bound is m·t(fwd) + t(erm).

Targets: efficient ≤ 1.15 × bound, efficient ≤ 0.6 × naive at m = 4, efficient peak memory
≤ 1.5 × ERM. The last line printed holds the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import current_rss_mib, machine_description, median_time, peak_rss_mib

BATCH, CLASSES, SIZE = 128, 10, 32
MS = (4, 10)


def configs() -> list[str]:
    """Names of all configurations, in the order they are run and printed."""
    names = ["erm", "fwd"]
    for m in MS:
        names += [f"naive-m{m}", f"efficient-m{m}", f"efficient-m{m}-chunk1"]
    return names


def run_one(name: str, reps: int, threads: int) -> dict:
    """Time one configuration in this process and measure its extra peak RSS.

    Args:
        name: one of :func:`configs`.
        reps: timed steps (after one warm-up step).
        threads: ``torch.set_num_threads`` value.
    """
    import torch

    from maxup.augment import Compose, CropFlip, Cutout
    from maxup.models import build_model
    from maxup.objective import MaxUpLoss, frozen_batchnorm_stats

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=CLASSES, in_channels=3, mean=(0.5,) * 3,
                        std=(0.25,) * 3)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(BATCH, 3, SIZE, SIZE)
    y = torch.randint(0, CLASSES, (BATCH,))
    gen = torch.Generator().manual_seed(0)
    aug = Compose([CropFlip(4, CLASSES), Cutout(16, CLASSES)])
    selection = []

    if name == "fwd":
        def step():
            with torch.no_grad(), frozen_batchnorm_stats(model):
                model(x)
    else:
        parts = name.split("-")
        m = 1 if parts[0] == "erm" else int(parts[1][1:])
        mode = "naive" if parts[0] == "naive" else "efficient"
        chunk = 1 if parts[-1] == "chunk1" else None
        objective = MaxUpLoss(aug, m=m, num_classes=CLASSES, mode=mode, chunk=chunk)

        def step():
            opt.zero_grad(set_to_none=True)
            out = objective(model, x, y, gen)
            out.loss.backward()
            opt.step()
            selection.append(out.selection_s)

    rss0 = current_rss_mib()
    t0 = time.perf_counter()
    med, n, times = median_time(step, reps=reps, warmup=1)
    sel = sorted(selection[1:])
    return {"name": name, "median_ms": med * 1e3, "n": n, "min_ms": min(times) * 1e3,
            "max_ms": max(times) * 1e3, "peak_mib": peak_rss_mib() - rss0,
            "selection_ms": sel[len(sel) // 2] * 1e3 if sel else 0.0,
            "total_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.reps, args.threads)))
        return 0

    print(f"# bench_step: ResNet-20, batch {BATCH}, 3x{SIZE}x{SIZE}, {CLASSES} classes, "
          f"crop_flip+cutout; median of {args.reps} steps after 1 warm-up; each config in a "
          "fresh process")
    print(f"# machine: {machine_description(args.threads)}")
    res = {}
    for name in configs():
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--reps", str(args.reps),
                               "--threads", str(args.threads)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        res[name] = json.loads(proc.stdout.strip().splitlines()[-1])

    print()
    print("| config | median ms/step | n | min–max ms | selection ms | peak MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in res.items():
        print(f"| {name} | {r['median_ms']:.0f} | {r['n']} | {r['min_ms']:.0f}–{r['max_ms']:.0f}"
              f" | {r['selection_ms']:.0f} | {r['peak_mib']:.0f} |")
    erm, fwd = res["erm"], res["fwd"]
    for m in MS:
        bound = m * fwd["median_ms"] + erm["median_ms"]
        print(f"| bound m={m}: {m}·t(fwd) + t(erm) | {bound:.0f} | | | | |")
    ratios = []
    for m in MS:
        bound = m * fwd["median_ms"] + erm["median_ms"]
        eff, eff1 = res[f"efficient-m{m}"], res[f"efficient-m{m}-chunk1"]
        naive = res[f"naive-m{m}"]
        ratios.append(
            f"m={m}: eff/bound={eff['median_ms'] / bound:.2f} "
            f"(chunk1 {eff1['median_ms'] / bound:.2f}; target ≤1.15), "
            f"eff/naive={eff['median_ms'] / naive['median_ms']:.2f}"
            + (" (target ≤0.6)" if m == 4 else "")
            + f", mem eff/erm={eff['peak_mib'] / erm['peak_mib']:.2f} "
            f"(chunk1 {eff1['peak_mib'] / erm['peak_mib']:.2f}; target ≤1.5), "
            f"mem naive/erm={naive['peak_mib'] / erm['peak_mib']:.2f}")
    print()
    print("ratios: " + "; ".join(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
