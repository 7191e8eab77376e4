"""The GPU path, checked in one prepared run: correctness on the device, step speed, certification.

Usage::

    python3 benchmarks/gpu_check.py --out DIR          # CUDA machine; < 8 min on one H200
    python3 benchmarks/gpu_check.py --tiny --out DIR   # CPU smoke run of the same code, < 1 min

Needs torch, torchvision, numpy and this repository (found from this file's location, or on
``PYTHONPATH``); never Ray, scipy, pandas or YAML. Data are synthetic and CIFAR-shaped
(3x32x32, 10 classes). Phases, in this order, each under the time budget (``--budget-s``):

1. **fp32 correctness, device vs CPU.** One model (the same weights on both), one batch and
   one CPU generator: the augmented copies are drawn on the CPU and moved to the device, so
   both sides see identical copies. For the efficient and the naive MaxUp objective
   (``maxup.objective.MaxUpLoss``) the loss, each example's selected copy and every
   parameter's gradient are compared, TF32 off. Tolerances: ``|Δloss| ≤ 1e-4·max(1, |loss|)``,
   ``‖Δgrad‖₂ ≤ 1e-3·‖grad‖₂`` over all parameters, selected copies identical. Without a GPU
   the device side is a second CPU copy of the model: the code runs, the comparison says so.
2. **bf16 selection agreement.** After a few ERM steps on learnable synthetic data (so copy
   losses reflect a model that predicts something), the selection pass picks each example's
   worst copy under fp32 (TF32 off) and under bf16 autocast, on a fixed batch; the share of
   examples where both pick the same copy must be ≥ 0.99 on CUDA. Reported beside it: the
   share of fp32 near-ties (top-2 loss gap < 0.01 nats), the agreement without them, the mean
   fp32-loss regret of the bf16 pick, and the agreement of TF32 (the engine's fp32 default on
   CUDA) with strict fp32. On CPU the rate is reported, not enforced (CPU bf16 kernels are
   not the GPU path under test).
3. **Step speed** per model: the step of ``benchmarks/bench_step.py`` (crop+flip then
   Cutout 16, MaxUpLoss, backward, SGD) for ERM, a no-grad forward (``fwd``), naive and
   efficient MaxUp at each m, under fp32 and bf16 autocast, channels_last off and on: median
   ms/step of n timed steps after warm-up, timed with CUDA events; peak memory is
   ``torch.cuda.max_memory_allocated`` minus the memory allocated before the first step.
   Ratios: efficient ÷ bound (bound = m·t(fwd) + t(ERM)) and efficient ÷ naive, as in
   BENCHMARKS.md. A configuration that runs out of memory is reported as such.
4. **Certification throughput**: noisy samples/s of ``maxup.certify.sample_noise_counts``
   (``benchmarks/bench_certify.py``'s measurement) per model and batch.

Speed and certification run model by model (ResNet-110 first, then WRN-28-10) while the budget
lasts; a configuration whose warm-up says it would not finish in time is skipped and listed.
Writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` after every measurement, so a run cut
short still leaves what it measured. Exit status: 0 when every enforced correctness check
passed, 1 when one failed, 2 on a usage error, 3 when the hard time limit (budget + 45 s)
stopped the run or an error outside any one measurement ended it.
"""

from __future__ import annotations

import time

_T0 = time.monotonic()  # the budget counts the imports too

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from dataclasses import asdict, dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE), str(_HERE.parent)):  # benchmarks/ helpers, then the repository
    if _p not in sys.path:
        sys.path.insert(0 if _p == str(_HERE) else 1, _p)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import machine_description, median_time, time_once  # noqa: E402
from bench_certify import bench as certify_rates  # noqa: E402
from bench_step import build_step  # noqa: E402

from maxup.augment import Compose, CropFlip, Cutout  # noqa: E402
from maxup.io import atomic_write_json, atomic_write_text  # noqa: E402
from maxup.models import build_model  # noqa: E402
from maxup.objective import MaxUpLoss  # noqa: E402

SCHEMA = "maxup.gpu_check/1"
CLASSES, SIZE = 10, 32
LOSS_RTOL = 1e-4
GRAD_REL_L2 = 1e-3
AGREEMENT_MIN = 0.99
NEAR_TIE_NATS = 0.01
HARD_STOP_GRACE_S = 45
WATCHED_MODULES = ("ray", "scipy", "pandas", "yaml", "pyarrow", "sklearn")


@dataclass(frozen=True)
class Plan:
    """What one run measures; :data:`DEVICE_PLAN` on a GPU, :data:`TINY_PLAN` with ``--tiny``."""

    models: tuple[str, ...]  # speed and certification, in priority order
    batch: int
    ms: tuple[int, ...]
    warmup: int
    reps: int
    check_model: str  # fp32 device-vs-CPU correctness
    check_batch: int
    check_m: int
    agree_model: str  # bf16 selection agreement
    agree_m: int
    agree_examples: int
    agree_rounds: int  # independent draws of the m copies of the fixed batch
    warm_train_steps: int
    warm_train_batch: int
    certify_batches: tuple[int, ...]
    certify_samples: int
    certify_reps: int
    budget_s: float
    precisions: tuple[str, ...] = ("fp32", "bf16")
    channels_last: tuple[bool, ...] = (False, True)
    threads: int | None = None  # torch CPU threads (None: torch's default)


DEVICE_PLAN = Plan(models=("resnet110", "wrn28_10"), batch=256, ms=(4, 10), warmup=5, reps=20,
                   check_model="resnet110", check_batch=64, check_m=4,
                   agree_model="resnet110", agree_m=4, agree_examples=512, agree_rounds=4,
                   warm_train_steps=50, warm_train_batch=256,
                   certify_batches=(400, 1000), certify_samples=10_000, certify_reps=5,
                   budget_s=420.0)
TINY_PLAN = Plan(models=("small_cnn",), batch=8, ms=(2, 4), warmup=1, reps=3,
                 check_model="small_cnn", check_batch=16, check_m=4,
                 agree_model="small_cnn", agree_m=4, agree_examples=128, agree_rounds=1,
                 warm_train_steps=5, warm_train_batch=32,
                 certify_batches=(100, 400), certify_samples=400, certify_reps=2,
                 budget_s=120.0, threads=1)


class HardStop(BaseException):
    """Raised by the SIGALRM handler when the run passes its hard time limit."""


def _elapsed() -> float:
    return time.monotonic() - _T0


def _error(exc: BaseException) -> str:
    """One line naming an unexpected error, with where it was raised (traceback to stderr)."""
    traceback.print_exception(exc)
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{at}"


def _finite(v: float | None, digits: int = 6) -> float | None:
    """``v`` rounded, or None when it is missing or not finite (the JSON refuses NaN)."""
    if v is None or not math.isfinite(v):
        return None
    return round(float(v), digits)


@contextlib.contextmanager
def strict_fp32():
    """TF32 off for cuDNN convolutions and CUDA matmuls inside; the previous flags after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def bf16_autocast(device: torch.device):
    """A ``MaxUpLoss`` autocast factory: bf16 autocast on ``device``'s type."""
    def factory():
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return factory


class DrawOnCPU:
    """Run an augmentation on the CPU with a CPU generator, then move its output to x's device.

    The same seed then gives the same copies on any device (a CUDA generator draws a different
    stream from a CPU one), which is what a device-vs-CPU comparison needs.
    """

    def __init__(self, augmentation):
        self.augmentation = augmentation

    def __call__(self, x, y, generator):
        xa, ta = self.augmentation(x.cpu(), y.cpu(), generator)
        return xa.to(x.device), ta.to(x.device)


def paper_augmentation():
    """Crop+flip (padding 4) then Cutout 16: the paper's CIFAR-10 MaxUp+Cutout copies."""
    return Compose([CropFlip(4, CLASSES), Cutout(16, CLASSES)])


def cifar_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A ``maxup.models`` model for 3x32x32 input, 10 classes, initialised from ``seed`` (CPU)."""
    torch.manual_seed(seed)
    return build_model(name, num_classes=CLASSES, in_channels=3, mean=(0.5,) * 3,
                       std=(0.25,) * 3, image_size=(SIZE, SIZE))


def synthetic_cifar(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``synthetic`` dataset's learnable class-prototype images, upsampled to 3x32x32 (CPU)."""
    from maxup.data.synthetic import make_split

    ds = make_split(split)
    return F.interpolate(ds.images, size=(SIZE, SIZE), mode="nearest"), ds.labels


# --------------------------------------------------------------------------- correctness


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().double().cpu() if p.grad is not None else torch.zeros(p.shape,
                                                                                 dtype=torch.double)
            for p in model.parameters()]


def compare_fp32(ref: dict, dev: dict) -> dict:
    """Compare one objective's CPU result ``ref`` with the device's ``dev``.

    Both are ``{"loss": float, "worst": LongTensor (B,), "losses": (m, B) tensor,
    "grads": [float64 tensors]}``; returns the JSON-ready comparison with ``passed``.
    """
    loss_err = abs(dev["loss"] - ref["loss"]) / max(1.0, abs(ref["loss"]))
    num = math.sqrt(sum(float((a - b).pow(2).sum()) for a, b in zip(dev["grads"], ref["grads"],
                                                                    strict=True)))
    den = math.sqrt(sum(float(b.pow(2).sum()) for b in ref["grads"]))
    grad_err = num / den if den > 0 else (0.0 if num == 0 else math.inf)
    per_tensor = [float((a - b).norm() / b.norm()) for a, b in zip(dev["grads"], ref["grads"],
                                                                   strict=True)
                  if float(b.norm()) > 0]
    same = dev["worst"] == ref["worst"]
    top2 = ref["losses"].topk(2, dim=0).values if ref["losses"].shape[0] > 1 else None
    gaps = (top2[0] - top2[1]) if top2 is not None else None
    flipped_gap = (float(gaps[~same].min()) if gaps is not None and not bool(same.all())
                   else None)
    passed = bool(same.all()) and loss_err <= LOSS_RTOL and grad_err <= GRAD_REL_L2
    return {"loss_cpu": _finite(ref["loss"], 8), "loss_device": _finite(dev["loss"], 8),
            "loss_rel_err": _finite(loss_err, 10), "grad_rel_l2": _finite(grad_err, 10),
            "grad_max_tensor_rel": _finite(max(per_tensor, default=0.0), 10),
            "selection_agreement": _finite(float(same.float().mean())),
            "smallest_cpu_top2_gap_where_flipped": _finite(flipped_gap, 10),
            "passed": passed}


def check_fp32(plan: Plan, device: torch.device) -> dict:
    """fp32 MaxUp loss, selection and gradients on ``device`` vs the CPU (see module doc, 1)."""
    base = cifar_model(plan.check_model).train()
    models = {"cpu": base, "device": copy.deepcopy(base).to(device)}
    xs, ys = synthetic_cifar("test")
    x, y = xs[:plan.check_batch], ys[:plan.check_batch]
    aug = DrawOnCPU(paper_augmentation())
    out = {"compared": f"{device.type} vs cpu", "model": plan.check_model,
           "batch": plan.check_batch, "m": plan.check_m, "tf32": False,
           "tolerance": {"loss": f"|Δ| ≤ {LOSS_RTOL:g}·max(1, |loss|)",
                         "grad": f"‖Δ‖₂ ≤ {GRAD_REL_L2:g}·‖grad‖₂ over all parameters",
                         "selection": "identical worst copy for every example"},
           "skipped_reason": None, "modes": {}}
    if device.type != "cuda":
        out["skipped_reason"] = ("no CUDA device: the 'device' side is a second CPU copy of the "
                                 "model, so this runs the comparison's code but tests no device")
    with strict_fp32():
        for mode in ("efficient", "naive"):
            objective = MaxUpLoss(aug, m=plan.check_m, num_classes=CLASSES, mode=mode)
            # The CPU's per-copy losses of the same copies, to size any near-tie that flips.
            xs_c, ts_c = objective.draw_copies(x, y, torch.Generator().manual_seed(1))
            losses = objective.selection_losses(models["cpu"], xs_c, ts_c, plan.check_m)
            res = {}
            for side, model in models.items():
                d = next(model.parameters()).device
                model.zero_grad(set_to_none=True)
                o = objective(model, x.to(d), y.to(d), torch.Generator().manual_seed(1))
                o.loss.backward()
                res[side] = {"loss": float(o.loss.detach()), "worst": o.worst.cpu(),
                             "losses": losses.view(plan.check_m, -1), "grads": _grads(model)}
            out["modes"][mode] = compare_fp32(res["cpu"], res["device"])
    out["passed"] = all(r["passed"] for r in out["modes"].values())
    return out


def selection_stats(l32: torch.Tensor, other: torch.Tensor) -> dict:
    """Agreement of two (m, N) per-copy loss tables' argmax, judged against fp32 ``l32``."""
    pick32, pick = l32.argmax(0), other.argmax(0)
    same = pick32 == pick
    top2 = l32.topk(2, dim=0).values
    tie = (top2[0] - top2[1]) < NEAR_TIE_NATS
    regret = top2[0] - l32.gather(0, pick[None])[0]
    clear = ~tie
    return {"examples": int(same.numel()), "agreement_rate": _finite(float(same.float().mean())),
            "near_tie_share": _finite(float(tie.float().mean())),
            "agreement_without_near_ties": (_finite(float(same[clear].float().mean()))
                                            if bool(clear.any()) else None),
            "mean_regret_nats": _finite(float(regret.mean()), 8),
            "max_regret_nats": _finite(float(regret.max()), 8)}


def check_bf16(plan: Plan, device: torch.device) -> dict:
    """bf16-autocast vs fp32 selection of the worst copy on a fixed batch (module doc, 2)."""
    model = cifar_model(plan.agree_model, seed=1).to(device).train()
    aug = paper_augmentation()
    xtr, ytr = synthetic_cifar("train")
    idx_gen = torch.Generator().manual_seed(2)
    gen = torch.Generator(device=device).manual_seed(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    erm = MaxUpLoss(aug, m=1, num_classes=CLASSES)
    train_losses = []
    for _ in range(plan.warm_train_steps):
        idx = torch.randint(0, len(ytr), (plan.warm_train_batch,), generator=idx_gen)
        o = erm(model, xtr[idx].to(device), ytr[idx].to(device), gen)
        opt.zero_grad(set_to_none=True)
        o.loss.backward()
        opt.step()
        train_losses.append(float(o.loss.detach()))
    xte, yte = synthetic_cifar("test")
    x, y = xte[:plan.agree_examples].to(device), yte[:plan.agree_examples].to(device)
    m = plan.agree_m
    fp32 = MaxUpLoss(aug, m=m, num_classes=CLASSES)
    bf16 = MaxUpLoss(aug, m=m, num_classes=CLASSES, autocast=bf16_autocast(device))
    l32, l16, ltf = [], [], []
    for _ in range(plan.agree_rounds):
        xs, ts = fp32.draw_copies(x, y, gen)
        with strict_fp32():
            l32.append(fp32.selection_losses(model, xs, ts, m).view(m, -1).float().cpu())
        l16.append(bf16.selection_losses(model, xs, ts, m).view(m, -1).float().cpu())
        if device.type == "cuda":  # the engine's fp32 default: TF32 convolutions
            saved = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = True
            try:
                ltf.append(fp32.selection_losses(model, xs, ts, m).view(m, -1).float().cpu())
            finally:
                torch.backends.cudnn.allow_tf32 = saved
    l32_all = torch.cat(l32, dim=1)
    stats = selection_stats(l32_all, torch.cat(l16, dim=1))
    enforced = device.type == "cuda"
    out = {"model": plan.agree_model, "m": m, "fixed_batch": int(x.shape[0]),
           "draws_of_copies": plan.agree_rounds, "reference": "fp32, TF32 off",
           "warm_train": {"erm_steps": plan.warm_train_steps, "batch": plan.warm_train_batch,
                          "first_loss": _finite(train_losses[0]) if train_losses else None,
                          "last_loss": _finite(train_losses[-1]) if train_losses else None},
           **stats, "threshold": AGREEMENT_MIN, "near_tie_nats": NEAR_TIE_NATS,
           "enforced": enforced,
           "not_enforced_reason": None if enforced else (
               "CPU: bf16 autocast here runs the CPU's kernels, not the GPU path under test; "
               "the rate is reported, not enforced"),
           "tf32_vs_fp32": selection_stats(l32_all, torch.cat(ltf, dim=1)) if ltf else None}
    out["meets_threshold"] = (stats["agreement_rate"] or 0.0) >= AGREEMENT_MIN
    out["passed"] = out["meets_threshold"] or not enforced
    return out


# --------------------------------------------------------------------------- speed


def step_configs(ms: tuple[int, ...]) -> list[str]:
    """ERM, the no-grad forward, then naive and efficient MaxUp per m (bench_step's names)."""
    names = ["erm", "fwd"]
    for m in ms:
        names += [f"naive-m{m}", f"efficient-m{m}"]
    return names


def measure_step(step, *, warmup: int, reps: int, cuda: bool, deadline: float) -> dict:
    """Time one configuration's ``step``: ``warmup`` untimed steps, then ``reps`` timed ones.

    After each warm-up step the remaining steps are estimated from that step's time; when they
    would end past ``deadline`` the configuration is skipped (``status`` says so).
    """
    selection = []

    def run():
        selection.append(step())

    for i in range(warmup):
        t = time_once(run, cuda_events=cuda)
        left = warmup - 1 - i + reps
        if time.monotonic() + t * left > deadline:
            return {"status": f"skipped: time budget (a warm-up step took {t * 1e3:.0f} ms, "
                              f"{left} more would not fit)"}
    selection.clear()
    med, n, times = median_time(run, reps=reps, warmup=0, cuda_events=cuda)
    return {"status": "ok", "median_ms": _finite(med * 1e3, 3), "n": n,
            "min_ms": _finite(min(times) * 1e3, 3), "max_ms": _finite(max(times) * 1e3, 3),
            "selection_ms": _finite(statistics.median(selection) * 1e3, 3)}


def speed_row(model: str, precision: str, channels_last: bool, config: str, plan: Plan,
              device: torch.device, deadline: float) -> dict:
    """One row of the speed table: build the step, time it, read its peak memory."""
    row = {"model": model, "precision": precision, "channels_last": channels_last,
           "config": config, "batch": plan.batch}
    if time.monotonic() > deadline:
        return {**row, "status": "skipped: time budget spent"}
    cuda = device.type == "cuda"
    oom, step = False, None
    try:
        step = build_step(config, model_name=model, batch=plan.batch, device=str(device),
                          precision=precision, channels_last=channels_last)
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        row.update(measure_step(step, warmup=plan.warmup, reps=plan.reps, cuda=cuda,
                                deadline=deadline))
        if cuda:
            peak = torch.cuda.max_memory_allocated(device)
            row["peak_mib"] = _finite(peak / 2**20, 1)
            row["peak_extra_mib"] = _finite((peak - before) / 2**20, 1)
    except torch.cuda.OutOfMemoryError:
        oom = True
    except Exception as exc:  # recorded; the next row still runs
        row["status"] = f"error: {_error(exc)}"
    del step  # free the model and its activations before the next row
    if oom:
        row["status"] = "out of memory"
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
    return row


def step_ratios(rows: list[dict], ms: tuple[int, ...]) -> list[dict]:
    """efficient ÷ bound and efficient ÷ naive (time and peak memory) per model/precision/CL."""
    groups: dict[tuple, dict] = {}
    for r in rows:
        if r.get("status") == "ok":
            groups.setdefault((r["model"], r["precision"], r["channels_last"]), {})[
                r["config"]] = r
    out = []
    for (model, precision, cl), g in groups.items():
        erm, fwd = g.get("erm"), g.get("fwd")
        for m in ms:
            eff, naive = g.get(f"efficient-m{m}"), g.get(f"naive-m{m}")
            if eff is None:
                continue
            res = {"model": model, "precision": precision, "channels_last": cl, "m": m}
            if erm and fwd:
                bound = m * fwd["median_ms"] + erm["median_ms"]
                res["bound_ms"] = _finite(bound, 3)
                res["efficient_over_bound"] = _finite(eff["median_ms"] / bound, 4)
            if naive:
                res["efficient_over_naive"] = _finite(eff["median_ms"] / naive["median_ms"], 4)
            if erm and eff.get("peak_extra_mib") and erm.get("peak_extra_mib"):
                res["efficient_peak_over_erm"] = _finite(
                    eff["peak_extra_mib"] / erm["peak_extra_mib"], 4)
                if naive and naive.get("peak_extra_mib"):
                    res["naive_peak_over_erm"] = _finite(
                        naive["peak_extra_mib"] / erm["peak_extra_mib"], 4)
            out.append(res)
    return out


def certify_row(model: str, batch: int, plan: Plan, device: torch.device) -> dict:
    """Noisy samples/s of ``sample_noise_counts`` (bench_certify.py's measurement)."""
    rates = certify_rates(model, (3, SIZE, SIZE), plan.certify_samples, batch, plan.certify_reps,
                          device)
    return {"model": model, "batch": batch, "samples_per_call": plan.certify_samples,
            "n": len(rates), "median_samples_per_s": _finite(statistics.median(rates), 1),
            "min_samples_per_s": _finite(min(rates), 1),
            "max_samples_per_s": _finite(max(rates), 1), "sigma": 0.25, "precision": "fp32"}


# --------------------------------------------------------------------------- report


def environment(device: torch.device) -> dict:
    """Hardware and software the figures were measured on."""
    import numpy
    import torchvision

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "torchvision": torchvision.__version__, "numpy": numpy.__version__,
           "cpu": machine_description(torch.get_num_threads()), "device": str(device),
           "cuda_runtime": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
           "speed_flags": {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                           "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                           "cudnn.benchmark": torch.backends.cudnn.benchmark}}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(device_name=p.name, capability=f"{p.major}.{p.minor}",
                   device_memory_gib=round(p.total_memory / 2**30, 1),
                   multiprocessors=p.multi_processor_count)
    else:
        env["device_name"] = "cpu (no CUDA device used)"
    return env


def exit_status(result: dict) -> int:
    """1 when an enforced correctness check failed (or never ran), else 0."""
    corr = result.get("correctness", {})
    parts = [corr.get("fp32_device_vs_cpu"), corr.get("bf16_selection")]
    return 0 if all(p is not None and p.get("passed") for p in parts) else 1


def _fmt(v, spec: str = ".1f") -> str:
    return "—" if v is None else format(v, spec)


def render_markdown(result: dict) -> str:
    """The human summary of ``result`` (the JSON's content)."""
    env, plan = result["environment"], result["plan"]
    timer = "CUDA events" if env["device"].startswith("cuda") else "perf_counter"
    stopped = f"; STOPPED: {result['stopped']}" if result.get("stopped") else ""
    lines = [f"# GPU check ({result['mode']})", "",
             f"- when: {result['started']}; wall {result['wall_s']:.1f} s of a "
             f"{plan['budget_s']:.0f} s budget{stopped}",
             f"- device: {env['device_name']}"
             + (f" (capability {env['capability']}, {env['device_memory_gib']} GiB, "
                f"CUDA {env['cuda_runtime']}, cuDNN {env['cudnn']})"
                if env.get("capability") else ""),
             f"- host: {env['cpu']}; torchvision {env['torchvision']}",
             f"- speed flags: {env['speed_flags']}",
             f"- modules imported: {result.get('modules', {})}",
             f"- correctness: **{'PASSED' if result.get('exit_status') == 0 else 'FAILED'}**",
             ""]
    corr = result.get("correctness", {})
    for key, r in corr.items():
        if r.get("error"):
            lines += [f"## {key}: ERROR", "", f"{r['error']}", ""]
    fp = corr.get("fp32_device_vs_cpu")
    if fp and not fp.get("error"):
        lines += [f"## fp32 correctness: {fp['compared']} ({fp['model']}, batch {fp['batch']}, "
                  f"m = {fp['m']}, TF32 off)", ""]
        if fp["skipped_reason"]:
            lines += [f"Device comparison skipped: {fp['skipped_reason']}.", ""]
        lines += [f"Tolerances: loss {fp['tolerance']['loss']}; gradient "
                  f"{fp['tolerance']['grad']}; {fp['tolerance']['selection']}.", "",
                  "| objective | loss (cpu) | loss (device) | loss rel. err | grad rel. L2 | "
                  "max tensor rel. | same worst copy | passed |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for mode, r in fp["modes"].items():
            lines.append(f"| {mode} | {_fmt(r['loss_cpu'], '.6f')} | "
                         f"{_fmt(r['loss_device'], '.6f')} | {_fmt(r['loss_rel_err'], '.1e')} | "
                         f"{_fmt(r['grad_rel_l2'], '.1e')} | "
                         f"{_fmt(r['grad_max_tensor_rel'], '.1e')} | "
                         f"{_fmt(r['selection_agreement'], '.4f')} | {r['passed']} |")
        lines.append("")
    bf = corr.get("bf16_selection")
    if bf and not bf.get("error"):
        enforced = ("enforced" if bf["enforced"]
                    else f"not enforced: {bf['not_enforced_reason']}")
        lines += [f"## bf16 selection agreement ({bf['model']}, m = {bf['m']}, fixed batch of "
                  f"{bf['fixed_batch']} × {bf['draws_of_copies']} draws of copies)", "",
                  f"- agreement with fp32 (TF32 off): **{_fmt(bf['agreement_rate'], '.4f')}** "
                  f"of {bf['examples']} examples (threshold {bf['threshold']}, "
                  f"{enforced})",
                  f"- fp32 near-ties (top-2 gap < {bf['near_tie_nats']} nats): "
                  f"{_fmt(bf['near_tie_share'], '.4f')}; agreement without them: "
                  f"{_fmt(bf['agreement_without_near_ties'], '.4f')}; mean regret "
                  f"{_fmt(bf['mean_regret_nats'], '.2e')} nats (max "
                  f"{_fmt(bf['max_regret_nats'], '.2e')})",
                  f"- model after {bf['warm_train']['erm_steps']} ERM steps: loss "
                  f"{_fmt(bf['warm_train']['first_loss'], '.3f')} → "
                  f"{_fmt(bf['warm_train']['last_loss'], '.3f')}"]
        if bf.get("tf32_vs_fp32"):
            lines.append(f"- TF32 (the engine's fp32 default on CUDA) vs strict fp32: agreement "
                         f"{_fmt(bf['tf32_vs_fp32']['agreement_rate'], '.4f')}")
        lines.append("")
    speed = result.get("speed", {})
    combos = [(p, cl) for p in plan["precisions"] for cl in plan["channels_last"]]
    heads = [f"{p}{' CL' if cl else ''}" for p, cl in combos]
    for model in plan["models"]:
        rows = [r for r in speed.get("rows", []) if r["model"] == model]
        if not rows:
            continue
        cell = {(r["precision"], r["channels_last"], r["config"]): r for r in rows}
        lines += [f"## Step time: {model}, batch {plan['batch']}, median ms/step of n = "
                  f"{plan['reps']} after {plan['warmup']} warm-up steps ({timer}; fp32 "
                  "means torch's default flags, as the engine trains: see speed flags)", "",
                  "| config | " + " | ".join(heads) + " |",
                  "|---|" + "---:|" * len(heads)]
        for config in step_configs(tuple(plan["ms"])):
            vals = []
            for p, cl in combos:
                r = cell.get((p, cl, config))
                if r is None:
                    vals.append("—")
                elif r["status"] == "ok":
                    vals.append(f"{r['median_ms']:.1f} ({r['min_ms']:.1f}–{r['max_ms']:.1f})")
                else:
                    vals.append(r["status"].split(":")[0])
            lines.append(f"| {config} | " + " | ".join(vals) + " |")
        if any(r.get("peak_mib") is not None for r in rows):
            lines += ["", f"Peak memory, {model} (MiB above the allocation before the first "
                      "step; torch.cuda.max_memory_allocated):", "",
                      "| config | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
            for config in step_configs(tuple(plan["ms"])):
                vals = [_fmt(cell.get((p, cl, config), {}).get("peak_extra_mib"), ".0f")
                        for p, cl in combos]
                lines.append(f"| {config} | " + " | ".join(vals) + " |")
        lines.append("")
    ratios = speed.get("ratios", [])
    if ratios:
        lines += ["## Ratios (from the medians above; bound = m·t(fwd) + t(ERM))", "",
                  "| model | precision | CL | m | bound ms | efficient ÷ bound | "
                  "efficient ÷ naive | eff. peak ÷ ERM | naive peak ÷ ERM |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in ratios:
            lines.append(f"| {r['model']} | {r['precision']} | {r['channels_last']} | {r['m']} | "
                         f"{_fmt(r.get('bound_ms'))} | {_fmt(r.get('efficient_over_bound'), '.2f')}"
                         f" | {_fmt(r.get('efficient_over_naive'), '.2f')} | "
                         f"{_fmt(r.get('efficient_peak_over_erm'), '.2f')} | "
                         f"{_fmt(r.get('naive_peak_over_erm'), '.2f')} |")
        lines.append("")
    cert = result.get("certification", {}).get("rows", [])
    if cert:
        lines += ["## Certification throughput (sample_noise_counts, fp32, σ = 0.25)", "",
                  "| model | batch | samples/s (median) | min–max | n (calls × samples) |",
                  "|---|---:|---:|---:|---|"]
        for r in cert:
            lines.append(f"| {r['model']} | {r['batch']} | {r['median_samples_per_s']:,.0f} | "
                         f"{r['min_samples_per_s']:,.0f}–{r['max_samples_per_s']:,.0f} | "
                         f"{r['n']} × {r['samples_per_call']} |")
        lines.append("")
    if result.get("skipped"):
        lines += ["## Skipped", ""] + [f"- {s}" for s in result["skipped"]] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _on_alarm(signum, frame):
    raise HardStop(f"hard time limit reached after {_elapsed():.0f} s")


def run(plan: Plan, device: torch.device, out_dir: Path, mode: str) -> dict:
    """Run every phase in order, writing ``gpu_check.json``/``.md`` after each measurement."""
    result: dict = {"schema": SCHEMA, "mode": mode,
                    "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "plan": asdict(plan), "environment": environment(device),
                    "correctness": {}, "speed": {"rows": [], "ratios": []},
                    "certification": {"rows": []}, "skipped": []}
    deadline = _T0 + plan.budget_s

    def save():
        result["wall_s"] = round(_elapsed(), 1)
        result["modules"] = {f"{name}_imported": name in sys.modules for name in WATCHED_MODULES}
        result["exit_status"] = exit_status(result)
        atomic_write_json(out_dir / "gpu_check.json", result)
        atomic_write_text(out_dir / "gpu_check.md", render_markdown(result))

    save()
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    # Counted from the script's start, like the budget: the imports are not free.
    signal.alarm(max(1, math.ceil(_T0 + plan.budget_s + HARD_STOP_GRACE_S - time.monotonic())))
    try:
        # An unexpected error is recorded and the run goes on: one run on a lent device
        # should bring back everything that can be measured.
        for key, check in (("fp32_device_vs_cpu", check_fp32), ("bf16_selection", check_bf16)):
            try:
                result["correctness"][key] = check(plan, device)
            except Exception as exc:
                result["correctness"][key] = {"passed": False, "error": _error(exc)}
            save()
        for model in plan.models:
            for precision in plan.precisions:
                for cl in plan.channels_last:
                    for config in step_configs(plan.ms):
                        row = speed_row(model, precision, cl, config, plan, device, deadline)
                        result["speed"]["rows"].append(row)
                        if row["status"] != "ok":
                            result["skipped"].append(
                                f"speed {model} {precision} channels_last={cl} {config}: "
                                f"{row['status']}")
                        result["speed"]["ratios"] = step_ratios(result["speed"]["rows"],
                                                                plan.ms)
                        save()
            for batch in plan.certify_batches:
                if time.monotonic() > deadline:
                    result["skipped"].append(f"certification {model} batch {batch}: "
                                             "time budget spent")
                    continue
                try:
                    result["certification"]["rows"].append(
                        certify_row(model, batch, plan, device))
                except Exception as exc:
                    result["skipped"].append(f"certification {model} batch {batch}: "
                                             f"{_error(exc)}")
                save()
    except HardStop as stop:
        result["stopped"] = str(stop)
    except Exception as exc:  # e.g. a sticky CUDA error outside any one measurement
        result["stopped"] = f"error: {_error(exc)}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    save()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the JSON and .md")
    parser.add_argument("--tiny", action="store_true",
                        help="small model, batch and n on the CPU (< 1 min): the smoke test")
    parser.add_argument("--device", help="default: cuda if visible (cpu with --tiny)")
    parser.add_argument("--budget-s", type=float, help="time budget, s (default 420; tiny 120)")
    parser.add_argument("--models", help="comma-separated speed/certification models, in order")
    parser.add_argument("--reps", type=int, help="timed steps per configuration")
    args = parser.parse_args(argv)

    plan = TINY_PLAN if args.tiny else DEVICE_PLAN
    name = args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    if not args.tiny and device.type != "cuda" and args.device is None:
        print("gpu_check: no CUDA device visible; use --tiny for the CPU smoke run "
              "(or --device cpu to run the full plan on the CPU, slowly)", file=sys.stderr)
        return 2
    if args.budget_s is not None:
        plan = replace(plan, budget_s=args.budget_s)
    if args.models:
        plan = replace(plan, models=tuple(m for m in args.models.split(",") if m))
    if args.reps is not None:
        plan = replace(plan, reps=args.reps)
    if plan.threads is not None:
        torch.set_num_threads(plan.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    mode = "tiny" if args.tiny else "full"
    print(f"gpu_check ({mode}) on {device}: writing {args.out}/gpu_check.json and .md",
          flush=True)
    result = run(plan, device, args.out, mode)
    print(render_markdown(result), flush=True)
    if result.get("stopped"):
        return 3
    return result["exit_status"]


if __name__ == "__main__":
    sys.exit(main())
