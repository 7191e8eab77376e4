"""Time and peak memory of one MaxUp training step vs. ERM on a CIFAR-size ResNet-20 (CPU).

Usage: ``.venv/bin/python benchmarks/bench_step.py [--reps 5] [--threads 2]``

Time: all configurations are built in ONE process and stepped round-robin (one warm-up round,
then ``--reps`` timed rounds), so load from other processes on a shared machine hits every
configuration alike; each configuration's time is the median of its ``--reps`` steps.
Memory: every configuration also runs in a fresh subprocess (``--one NAME``, one warm-up and
one measured step), so that its peak is its own: peak = ``ru_maxrss`` after the steps minus the
resident size just before the first step (see ``benchmarks/_common.py``).
A step is augmentation + loss + backward + SGD step on a fixed batch of 128 random 3x32x32
images, 10 classes, augmentation crop_flip+cutout (padding 4, Cutout 16).

Configurations: ``erm`` (MaxUp m = 1, i.e. standard augmentation training); ``fwd`` (one
no-grad forward of the batch with BN in batch-stats mode, as in the selection pass);
``naive-mM`` (forward and backward of all m·B copies); ``efficient-mM`` (the default: no-grad
selection two copies, i.e. 2·B images, per forward, then one training step on the B worst);
``efficient-mM-all`` (selection of all m·B copies in one pass). The bound is
m·t(fwd) + t(erm).

Targets: efficient ≤ 1.15 × bound, efficient ≤ 0.6 × naive at m = 4, efficient peak memory
≤ 1.5 × ERM. The last line printed holds the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time

from _common import machine_description, peak_extra_mib, round_robin

BATCH, CLASSES, SIZE = 128, 10, 32
MS = (4, 10)


def configs() -> list[str]:
    """Names of all configurations, in the order they are run and printed."""
    names = ["erm", "fwd"]
    for m in MS:
        names += [f"naive-m{m}", f"efficient-m{m}", f"efficient-m{m}-all"]
    return names


def build_step(name: str, *, model_name: str = "resnet20", batch: int = BATCH,
               device: str = "cpu", precision: str = "fp32", channels_last: bool = False,
               size: int = SIZE, compile_mode: str | None = None):
    """Build one configuration's model, data and optimiser; return ``step()`` (no arguments).

    ``step()`` returns the seconds the selection pass took (0 for configurations without one).
    The defaults are this benchmark's CPU setting; ``benchmarks/gpu_check.py`` builds the same
    step on a GPU (the engine's way: data, model and augmentation generator on the device).

    Args:
        name: one of :func:`configs` (any ``m``: ``naive-m7`` works too; ``efficient-m4-c1``
            selects one copy per forward, ``-cN`` N copies; the default is 2, ``-all`` all).
        model_name: a ``maxup.models`` name taking 3 x size x size input.
        batch: examples per step.
        device: where the model, the batch and the augmentation generator live.
        precision: ``"fp32"`` or ``"bf16"`` (every forward under bf16 autocast on ``device``,
            as the engine's ``train.precision: bf16``).
        channels_last: model and batch in channels-last memory format (``train.channels_last``).
        size: image side (Cutout's hole is half of it: 16 at 32).
        compile_mode: forwards through ``torch.compile`` in this mode (``train.compile_mode``:
            ``default``, ``reduce-overhead``, ``max-autotune``); None: eager.
    """
    import torch

    from maxup.augment import Compose, CropFlip, Cutout
    from maxup.models import build_model
    from maxup.objective import MaxUpLoss, frozen_batchnorm_stats

    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=CLASSES, in_channels=3, mean=(0.5,) * 3,
                        std=(0.25,) * 3, image_size=(size, size)).to(dev)
    x = torch.rand(batch, 3, size, size).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    y = torch.randint(0, CLASSES, (batch,)).to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    aug = Compose([CropFlip(4, CLASSES), Cutout(size // 2, CLASSES)])
    forward = model
    if compile_mode is not None:
        from maxup.engine.compiling import compile_model

        forward = compile_model(model, compile_mode)
    autocast = None
    if precision == "bf16":
        def autocast():
            return torch.autocast(dev.type, dtype=torch.bfloat16)
    elif precision != "fp32":
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")

    if name == "fwd":
        ctx = autocast or contextlib.nullcontext

        def step():
            with torch.no_grad(), frozen_batchnorm_stats(model), ctx():
                forward(x)
            return 0.0
        return step
    parts = name.split("-")
    m = 1 if parts[0] == "erm" else int(parts[1][1:])
    mode = "naive" if parts[0] == "naive" else "efficient"
    last = parts[-1]
    chunk = None if last == "all" else int(last[1:]) if re.fullmatch(r"c\d+", last) else 2
    objective = MaxUpLoss(aug, m=m, num_classes=CLASSES, mode=mode, chunk=chunk,
                          autocast=autocast)

    def step():
        opt.zero_grad(set_to_none=True)
        out = objective(forward, x, y, gen)
        out.loss.backward()
        opt.step()
        return out.selection_s
    return step


def run_one(name: str, threads: int) -> dict:
    """Peak extra RSS (MiB) of one configuration: one warm-up and one measured step, here.

    Args:
        name: one of :func:`configs`.
        threads: ``torch.set_num_threads`` value.
    """
    import torch

    torch.set_num_threads(threads)
    return {"name": name, "peak_mib": peak_extra_mib(build_step(name))}


def time_all(reps: int, threads: int) -> dict:
    """Median ms/step of every configuration, stepped round-robin in this process."""
    import torch

    torch.set_num_threads(threads)
    return round_robin({name: build_step(name) for name in configs()}, reps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.threads)))
        return 0

    print(f"# bench_step: ResNet-20, batch {BATCH}, 3x{SIZE}x{SIZE}, {CLASSES} classes, "
          f"crop_flip+cutout; median of {args.reps} round-robin steps after 1 warm-up "
          "round; peak RSS of each config in a fresh process")
    print(f"# machine: {machine_description(args.threads)}")
    t0 = time.perf_counter()
    res = {}
    for name in configs():
        proc = subprocess.run([sys.executable, __file__, "--one", name,
                               "--threads", str(args.threads)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        res[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, timing in time_all(args.reps, args.threads).items():
        res[name].update(timing)
    print(f"# wall time {time.perf_counter() - t0:.0f} s; load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())} (other processes share the CPU)")

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
        eff, eff1 = res[f"efficient-m{m}"], res[f"efficient-m{m}-all"]
        naive = res[f"naive-m{m}"]
        ratios.append(
            f"m={m}: eff/bound={eff['median_ms'] / bound:.2f} "
            f"(all-at-once {eff1['median_ms'] / bound:.2f}; target ≤1.15), "
            f"eff/naive={eff['median_ms'] / naive['median_ms']:.2f}"
            + (" (target ≤0.6)" if m == 4 else "")
            + f", mem eff/erm={eff['peak_mib'] / erm['peak_mib']:.2f} "
            f"(all-at-once {eff1['peak_mib'] / erm['peak_mib']:.2f}; target ≤1.5), "
            f"mem naive/erm={naive['peak_mib'] / erm['peak_mib']:.2f}")
    print()
    print("ratios: " + "; ".join(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
