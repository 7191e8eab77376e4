"""The GPU speed options, measured in one prepared run: precision, channels_last, compile, the
selection chunk, the engine's epoch against its steps, and certification at bf16 / compiled.

Usage::

    python3 benchmarks/gpu_speed.py --out DIR            # CUDA machine; < 8 min on one H200
    python3 benchmarks/gpu_speed.py --tiny --out DIR     # CPU smoke run of the same code

Needs torch and this repository only (no Ray, no network, no dataset files: data are
synthetic). Sections, in this order, while the budget (``--budget-s``) lasts:

1. **step** (``step``): ms per training step, median of ``--reps`` CUDA-event-timed steps after
   warm-up, of ResNet-110 (tiny: small_cnn) on a fixed batch of 256 (tiny: 32) CIFAR-shaped
   images with crop+flip+Cutout 16, for ERM, naive MaxUp m = 4 and efficient MaxUp m = 4 with
   ``chunk`` 1, 2 (the default) and all copies, under fp32 (TF32 as the engine leaves it),
   bf16 autocast + channels_last, eager, under ``torch.compile`` and (GPU) with CUDA graphs
   (``reduce-overhead``); compile seconds reported apart (the warm-up calls are timed
   separately). Ratios: efficient ÷ naive and
   efficient ÷ ERM per setting; the issue's targets (ResNet-110, batch 256, bf16 + CL:
   efficient m = 4 ≤ 20 ms and ≤ 0.8 × naive, ERM ≤ 12 ms) are printed beside them.
2. **engine** (``engine``): ``maxup.engine.train`` for 2 epochs on the ``synthetic`` dataset
   (1,024 3x16x16 images; resident on the device), ResNet-20 (tiny: small_cnn), m = 4, batch
   256 (tiny: 64); the second epoch's ``train_s`` against steps × the same step timed alone
   (target ≤ 1.1).
3. **certify** (``certify``): noisy samples/s of ``maxup.certify.sample_noise_counts`` for
   ResNet-110 (tiny: small_cnn) at batches 1,000 and 4,000 (tiny: 100), fp32, bf16 autocast
   and compiled; and Cohen's CERTIFY on a fixed set of images (tiny: 4, GPU: 20; n0 = 100,
   n = 10,000; the same noise seeds for every arithmetic) comparing each variant's predictions,
   abstentions and radii with fp32's.

Packing several trials on one GPU is measured by ``maxup calibrate --pack N``.
Writes ``DIR/gpu_speed.json`` after every measurement (a run cut short keeps what it measured).
Exit status 0 when it ran to the end (this is a measurement, not a check; ``gpu_check.py``
judges correctness), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_step  # noqa: E402
import torch  # noqa: E402
from _common import median_time  # noqa: E402

CLASSES = 10
SECTIONS = ("step", "engine", "certify")


@dataclass(frozen=True)
class Plan:
    """Sizes of one run (:func:`plan_for`)."""

    model: str
    engine_model: str
    size: int
    batch: int
    engine_batch: int
    reps: int
    warmup: int
    certify_batches: tuple[int, ...]
    certify_samples: int
    certify_images: int
    certify_n0: int
    certify_n: int
    #: (precision, channels_last, compile mode or False, step configs) measured, in order
    step_grid: tuple


ALL_STEPS = ("erm", "naive-m4", "efficient-m4-c1", "efficient-m4-c2", "efficient-m4-all")


def plan_for(tiny: bool) -> Plan:
    """Sizes: a CPU smoke run (``tiny``) or the GPU measurement. Compiling costs 30-90 s per
    configuration, so only the ones that answer the issue's targets are compiled."""
    if tiny:
        grid = (("fp32", False, False, ALL_STEPS), ("bf16", True, False, ("erm",)),
                ("fp32", False, "default", ("efficient-m4-c2",)))
        return Plan("small_cnn", "small_cnn", 16, 32, 64, 3, 2, (100,), 400, 4, 50, 400, grid)
    grid = (("fp32", False, False, ALL_STEPS), ("bf16", True, False, ALL_STEPS),
            ("bf16", True, "default", ("erm", "naive-m4", "efficient-m4-c2", "efficient-m4-all")),
            ("bf16", True, "reduce-overhead", ("erm", "efficient-m4-c2", "efficient-m4-all")))
    return Plan("resnet110", "resnet20", 32, 256, 256, 20, 5, (1000, 4000), 40_000, 20, 100,
                10_000, grid)


def _model(name: str, size: int, device: torch.device, channels_last: bool):
    from maxup.models import build_model

    torch.manual_seed(0)
    model = build_model(name, num_classes=CLASSES, in_channels=3, mean=(0.5,) * 3,
                        std=(0.25,) * 3, image_size=(size, size)).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def build_step(config: str, plan: Plan, device: torch.device, *, precision: str,
               channels_last: bool, compiled: str | bool, model: str | None = None,
               size: int | None = None, batch: int | None = None):
    """One training step (augment, MaxUp loss, backward, SGD) as the engine takes it:
    ``bench_step.build_step`` at this plan's sizes.

    Args:
        config: ``erm``, ``naive-m4``, ``efficient-m4-c1``, ``efficient-m4-c2``,
            ``efficient-m4-all`` (any m).
        compiled: False (eager) or a ``train.compile_mode``.
    """
    return bench_step.build_step(config, model_name=model or plan.model,
                                 batch=batch or plan.batch, device=str(device),
                                 precision=precision, channels_last=channels_last,
                                 size=size or plan.size, compile_mode=compiled or None)


def _time(step, plan: Plan, cuda: bool) -> dict:
    """Compile/warm-up seconds (the first calls, synchronised) and the median step."""
    t0 = time.perf_counter()
    for _ in range(plan.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    med, n, times = median_time(step, reps=plan.reps, warmup=0, cuda_events=cuda)
    return {"ms": med * 1e3, "n": n, "min_ms": min(times) * 1e3, "warmup_s": warm}


def step_section(plan: Plan, device: torch.device, deadline: float, emit) -> list[dict]:
    cuda = device.type == "cuda"
    rows = []
    for precision, cl, compiled, configs in plan.step_grid:
        for config in configs:
            if time.perf_counter() > deadline:
                rows.append({"config": config, "skipped": "budget"})
                continue
            row = {"model": plan.model, "batch": plan.batch, "config": config,
                   "precision": precision, "channels_last": cl, "compiled": compiled}
            try:
                row.update(_time(build_step(config, plan, device, precision=precision,
                                            channels_last=cl, compiled=compiled), plan, cuda))
            except Exception as exc:  # out of memory, a compiler failure: report it
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            rows.append(row)
            emit()
    return rows


def step_ratios(rows: list[dict]) -> list[dict]:
    """Per (precision, channels_last, compiled): efficient ÷ naive and ÷ ERM at m = 4."""
    out = []
    keyed = {(r.get("precision"), r.get("channels_last"), r.get("compiled"), r["config"]): r
             for r in rows if "ms" in r}
    for (p, cl, c, config), r in keyed.items():
        if not config.startswith("efficient"):
            continue
        naive, erm = keyed.get((p, cl, c, "naive-m4")), keyed.get((p, cl, c, "erm"))
        out.append({"precision": p, "channels_last": cl, "compiled": c, "config": config,
                    "efficient_ms": r["ms"],
                    "vs_naive": r["ms"] / naive["ms"] if naive else None,
                    "vs_erm": r["ms"] / erm["ms"] if erm else None})
    return out


def engine_section(plan: Plan, device: torch.device, work: Path) -> dict:
    """The engine's second epoch against steps × the same step timed alone."""
    from maxup.engine import train

    precision, cl = ("bf16", True) if device.type == "cuda" else ("fp32", False)
    config = {
        "seed": 0, "model": {"name": plan.engine_model}, "data": {"name": "synthetic"},
        "augment": {"ops": ["crop_flip", "cutout"], "cutout_size": 8},
        "maxup": {"m": 4, "warmup_epochs": 0},
        "optim": {"lr": 0.05, "momentum": 0.9},
        "train": {"epochs": 2, "batch_size": plan.engine_batch, "eval_batch_size": 1024,
                  "device": device.type, "precision": precision, "channels_last": cl,
                  "progress": False, "deterministic": False},
    }
    record = train(config, work / "engine", log=None, resume=False)
    epoch = record["history"][-1]
    steps = -(-1024 // plan.engine_batch)
    step = build_step("efficient-m4-c2", plan, device, precision=precision, channels_last=cl,
                      compiled=False, model=plan.engine_model, size=16,
                      batch=plan.engine_batch)
    alone = _time(step, plan, device.type == "cuda")
    return {"model": plan.engine_model, "batch": plan.engine_batch, "precision": precision,
            "channels_last": cl, "steps": steps, "epoch_train_s": epoch["train_s"],
            "step_ms": alone["ms"], "ratio": epoch["train_s"] / (steps * alone["ms"] / 1e3)}


def certify_section(plan: Plan, device: torch.device, deadline: float, emit) -> dict:
    """Samples/s per arithmetic and batch, and CERTIFY's answers against fp32's."""
    from maxup.certify import certify, sample_noise_counts
    from maxup.engine.compiling import compile_model

    net = _model(plan.model, plan.size, device, channels_last=device.type == "cuda").eval()

    class Bf16(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return self.inner(x).float()

    variants = {"fp32": net, "bf16": Bf16(net), "compiled-fp32": compile_model(net)}
    image = torch.rand(3, plan.size, plan.size, generator=torch.Generator().manual_seed(3))
    image = image.to(device)
    rates = []
    for name, model in variants.items():
        for batch in plan.certify_batches:
            if time.perf_counter() > deadline:
                rates.append({"variant": name, "batch": batch, "skipped": "budget"})
                continue

            def call(model=model, batch=batch):
                gen = torch.Generator(device=device).manual_seed(0)
                sample_noise_counts(model, image, plan.certify_samples, 0.25, CLASSES, batch,
                                    gen)
            med, n, _ = median_time(call, reps=3, warmup=1, cuda_events=device.type == "cuda")
            rates.append({"variant": name, "batch": batch, "n": n,
                          "samples_per_s": plan.certify_samples / med})
            emit()
    images = torch.rand(plan.certify_images, 3, plan.size, plan.size,
                        generator=torch.Generator().manual_seed(4)).to(device)
    answers = {}
    for name, model in variants.items():
        if time.perf_counter() > deadline:
            break
        answers[name] = [certify(model, img, sigma=0.25, n0=plan.certify_n0, n=plan.certify_n,
                                 alpha=0.001, batch=max(plan.certify_batches),
                                 num_classes=CLASSES,
                                 generator=torch.Generator(device=device).manual_seed(i))
                         for i, img in enumerate(images)]
    agreement = []
    for name, got in answers.items():
        ref = answers["fp32"]
        agreement.append({
            "variant": name, "images": len(got),
            "same_prediction": sum(a[0] == b[0] for a, b in zip(got, ref, strict=True)),
            "abstentions": sum(a[0] == -1 for a in got),
            "max_radius_diff": max(abs(a[1] - b[1]) for a, b in zip(got, ref, strict=True)),
        })
    return {"rates": rates, "agreement": agreement, "n0": plan.certify_n0, "n": plan.certify_n}


def environment(device: torch.device) -> dict:
    from maxup import records

    env = records.environment(device=str(device))
    return {k: env.get(k) for k in ("torch", "cuda", "cudnn", "device_name", "git_commit",
                                    "git_dirty", "threads", "precision")}


def _setting(r: dict) -> str:
    return (f"{r['precision']}{'+CL' if r['channels_last'] else ''}"
            f"{' compiled (' + r['compiled'] + ')' if r['compiled'] else ''}")


def render(result: dict) -> str:
    """A short plain-text summary of ``result``."""
    lines = [f"gpu_speed on {result['environment'].get('device_name')} "
             f"(torch {result['environment'].get('torch')})"]
    for r in result.get("step", []):
        if "ms" in r:
            lines.append(f"  step {r['config']:<17} {_setting(r)}: {r['ms']:.2f} ms "
                         f"(n={r['n']}, warm-up {r['warmup_s']:.1f} s)")
        elif "error" in r or "skipped" in r:
            lines.append(f"  step {r['config']}: {r.get('error') or 'skipped: ' + r['skipped']}")
    for r in result.get("ratios", []):
        ratios = ", ".join(f"{label} {r[key]:.2f}" for key, label in
                           (("vs_naive", "÷naive"), ("vs_erm", "÷ERM")) if r[key] is not None)
        lines.append(f"  {r['config']} {_setting(r)}: {ratios or 'no baseline measured'}")
    if "engine" in result:
        e = result["engine"]
        lines.append(f"  engine epoch {e['epoch_train_s']:.3f} s vs {e['steps']} steps × "
                     f"{e['step_ms']:.2f} ms: ratio {e['ratio']:.2f} (target ≤ 1.1)")
    for r in result.get("certify", {}).get("rates", []):
        if "samples_per_s" in r:
            lines.append(f"  certify {r['variant']} batch {r['batch']}: "
                         f"{r['samples_per_s']:.0f} samples/s")
    for r in result.get("certify", {}).get("agreement", []):
        lines.append(f"  certify {r['variant']}: {r['same_prediction']}/{r['images']} "
                     f"predictions as fp32, {r['abstentions']} abstentions, largest radius "
                     f"difference {r['max_radius_diff']:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke sizes")
    parser.add_argument("--device", help="default: cuda if visible (cpu with --tiny)")
    parser.add_argument("--budget-s", type=float, help="seconds (default 420; tiny 300)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {', '.join(SECTIONS)}")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        print(f"gpu_speed: --sections: got {bad[0]!r}; allowed: {', '.join(SECTIONS)}",
              file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cpu" if args.tiny or not torch.cuda.is_available()
                                          else "cuda"))
    plan = plan_for(args.tiny or device.type == "cpu")
    deadline = time.perf_counter() + (args.budget_s or (300 if args.tiny else 420))
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"schema": "maxup.gpu_speed/1", "environment": environment(device),
                    "plan": plan.__dict__}

    def emit():
        from maxup.io import atomic_write_json

        atomic_write_json(args.out / "gpu_speed.json", result)

    if "step" in sections:
        result["step"] = []
        result["step"] = step_section(plan, device, deadline, emit)
        result["ratios"] = step_ratios(result["step"])
        emit()
    if "engine" in sections and time.perf_counter() < deadline:
        result["engine"] = engine_section(plan, device, args.out)
        emit()
    if "certify" in sections and time.perf_counter() < deadline:
        result["certify"] = certify_section(plan, device, deadline, emit)
        emit()
    text = render(result)
    (args.out / "gpu_speed.txt").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
