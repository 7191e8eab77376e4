"""The GPU path, checked in one prepared run: correctness on the device, determinism, speed.

Usage::

    python3 benchmarks/gpu_check.py --out DIR          # CUDA machine; < 8 min on one H200
    python3 benchmarks/gpu_check.py --tiny --out DIR   # CPU smoke run of the same code, < 1 min
    python3 benchmarks/gpu_check.py --tiny --out DIR --phases fp32,determinism

Needs torch, torchvision, numpy and this repository (found from this file's location, or on
``PYTHONPATH``); never Ray, scipy or pandas (PyYAML only through the engine's config module,
which the determinism phase imports). Data are synthetic: CIFAR-shaped (3x32x32, 10 classes)
for phases 1-2 and 4-5, the engine's ``synthetic`` dataset (3x16x16) for phase 3. Phases
(``--phases``, default all), in this order, under the time budget (``--budget-s``):

1. **fp32 correctness against float64** (``fp32``). One model (the same initial weights
   everywhere), one batch and its m augmented copies, drawn once on the CPU from one seeded
   generator. The reference is an independent float64 implementation of MaxUp written here
   (:func:`reference_maxup`, on the CPU, ``model.double()``): per-copy losses from plain
   forward passes, each example's worst copy by argmax, the mean of the chosen copies' losses
   back-propagated. It reproduces each mode's BatchNorm semantics under ``maxup.bn:
   batch_stats`` (the default): *efficient* judges copies with no-grad forwards of chunks of
   ``CHECK_CHUNK`` copies (BN normalising with each chunk's statistics), then forwards the B
   chosen copies alone with grad (BN over those B); *naive* forwards all m·B copies at once
   with grad (BN over the whole stack, the gradient flowing through its statistics) and takes
   the chosen rows. Running statistics never reach an output (BN is in training mode), and
   every computation starts from its own copy of the initial weights. The objective under
   test (``maxup.objective.MaxUpLoss``, efficient and naive) runs on the device in fp32, TF32
   off. Its errors are judged against what fp32 itself costs on this network and batch: plain
   cross-entropy (ERM) of each copy k < m, in fp32 on the device and in float64, with the
   forward of the mode's gradient pass (efficient: copy k's B images alone; naive: copy k's
   rows of one forward of the stack); the ERM error is the largest over the m copies (one
   copy's error varies with the batch by up to 100x on a deep net at initialisation). Pass
   criteria, per mode:

   - gradient: ``‖g − g64‖₂/‖g64‖₂ ≤ ERM_FACTOR · ERM error + GRAD_FLOOR`` over all
     parameters (ERM_FACTOR = 2, GRAD_FLOOR = 1e-6: the floor keeps an exactly-zero ERM
     error from making the check impossible);
   - loss: ``|L − L64|/max(1, |L64|) ≤ ERM_FACTOR · ERM error + LOSS_FLOOR`` (1e-6);
   - selection: the chosen copy equals the float64 one for every example whose float64 top-2
     copy-loss gap exceeds the margin ``max(SELECTION_MARGIN_NATS, SELECTION_MARGIN_FACTOR ·
     e)``, e the largest |fp32 − float64| per-copy loss of an fp32 run of the reference on the
     device (1e-3 nats, factor 2: no copy's loss is off by more than e, so a gap above 2e
     cannot flip legitimately). Examples under the margin are counted, not judged.

   Reported besides: the ERM errors per copy and the independent fp32 implementation's own
   errors. Without a GPU the device is the CPU in fp32: the comparison is real there too.
2. **bf16 selection** (``bf16``). After a few ERM steps on learnable synthetic data (so copy
   losses reflect a model that predicts something), the selection pass picks each example's
   worst copy under fp32 (TF32 off) and under bf16 autocast, on a fixed batch. Judged on the
   examples that are not fp32 near-ties (top-2 loss gap ≥ ``NEAR_TIE_NATS`` = 0.01 nats): the
   bf16 pick must agree with the fp32 one on ≥ ``AGREEMENT_MIN`` (0.99) of them, and the mean
   regret of the bf16 pick (fp32 loss of the fp32 pick minus fp32 loss of the bf16 pick, over
   all examples) must be ≤ ``REGRET_MAX_NATS`` (1e-3 nats). Reported beside it: the raw
   agreement, the near-tie share, the largest regret, and TF32 (the engine's fp32 default on
   CUDA) vs strict fp32. Enforced on CUDA; on the CPU reported (CPU bf16 kernels are not the
   GPU path under test).
3. **Determinism** (``determinism``). Two trainings of ``maxup.engine.train`` with
   ``train.deterministic: true`` on the device under test, same config (tiny: small_cnn on
   128 synthetic images, 2 epochs, m = 2; CUDA: resnet20 on the 1,024 synthetic images,
   2 epochs, m = 2), each into its own folder under ``OUT/determinism/`` (``--det-dir``):
   the saved checkpoints' model tensors must be bit-identical (``torch.equal``) and the
   records' histories identical except the timing fields (:data:`TIMING_FIELDS`). Enforced
   on every device.
4. **Step speed** per model (``speed``): the step of ``benchmarks/bench_step.py`` (crop+flip
   then Cutout 16, MaxUpLoss, backward, SGD) for ERM, a no-grad forward (``fwd``), naive and
   efficient MaxUp at each m, under fp32 and bf16 autocast, channels_last off and on: median
   ms/step of n timed steps after warm-up, timed with CUDA events; peak memory is
   ``torch.cuda.max_memory_allocated`` minus the memory allocated before the first step.
   Ratios: efficient ÷ bound (bound = m·t(fwd) + t(ERM)) and efficient ÷ naive, as in
   BENCHMARKS.md. A configuration that runs out of memory is reported as such.
5. **Certification throughput** (``certify``): noisy samples/s of
   ``maxup.certify.sample_noise_counts`` (``benchmarks/bench_certify.py``'s measurement) per
   model and batch.

Speed and certification run model by model (ResNet-110 first, then WRN-28-10) while the budget
lasts; a configuration whose warm-up says it would not finish in time is skipped and listed.
Writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` after every measurement, so a run cut
short still leaves what it measured. Exit status: 0 when every enforced check of the chosen
phases passed, 1 when one failed, 2 on a usage error, 3 when the hard time limit (budget +
45 s) stopped the run or an error outside any one measurement ended it.

``--plant`` (testing only, hidden from ``--help``) swaps in a wrong objective or a broken
training, which the check must then fail: ``mean-copy`` back-propagates the mean of the m
copies' losses instead of the worst, ``random-copy`` a copy picked at random, and
``nondeterministic`` adds unseeded noise to the weights after every optimiser step of the
determinism phase's second run.
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
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
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
from maxup.objective import MaxUpLoss, MaxUpOutput, soft_cross_entropy  # noqa: E402

SCHEMA = "maxup.gpu_check/2"
CLASSES, SIZE = 10, 32
# Phase 1: MaxUp's fp32 error vs float64 may be at most ERM_FACTOR × plain ERM's, plus a floor.
ERM_FACTOR = 2.0
GRAD_FLOOR = 1e-6  # relative L2 gradient error always allowed (≈ 8 fp32 roundings)
LOSS_FLOOR = 1e-6  # |Δloss| / max(1, |loss|) always allowed
SELECTION_MARGIN_NATS = 1e-3  # float64 top-2 gaps at or under the margin are not judged...
SELECTION_MARGIN_FACTOR = 2.0  # ...nor under this × the largest fp32 per-copy loss error
CHECK_CHUNK = 2  # copies per selection forward of the objective under test (its default)
COPY_SEED = 1  # the CPU generator the phase-1 copies are drawn from
# Phase 2: bf16 picks, judged on examples that are not fp32 near-ties.
AGREEMENT_MIN = 0.99
NEAR_TIE_NATS = 0.01
REGRET_MAX_NATS = 1e-3
# Phase 3: record fields that measure time, not what was trained.
TIMING_FIELDS = ("wall_s", "train_s", "eval_s", "selection_s", "images_per_s", "tokens_per_s",
                 "compile_s")
HARD_STOP_GRACE_S = 45
WATCHED_MODULES = ("ray", "scipy", "pandas", "yaml", "pyarrow", "sklearn")
PHASES = ("fp32", "bf16", "determinism", "speed", "certify")
PLANTS = ("mean-copy", "random-copy", "nondeterministic")
PLANT_SEED = 12345  # random-copy's picks (fixed, so a run is repeatable)
#: phase -> its enforced check's key under ``correctness``
ENFORCED = {"fp32": "fp32_vs_float64", "bf16": "bf16_selection", "determinism": "determinism"}


@dataclass(frozen=True)
class Plan:
    """What one run measures; :data:`DEVICE_PLAN` on a GPU, :data:`TINY_PLAN` with ``--tiny``."""

    models: tuple[str, ...]  # speed and certification, in priority order
    batch: int
    ms: tuple[int, ...]
    warmup: int
    reps: int
    check_model: str  # fp32 vs float64 correctness
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
    det_model: str = "small_cnn"  # determinism: two engine trainings
    det_subset: int | None = 128  # synthetic training images (None: all 1,024)
    det_epochs: int = 2
    det_m: int = 2
    det_batch: int = 32
    precisions: tuple[str, ...] = ("fp32", "bf16")
    channels_last: tuple[bool, ...] = (False, True)
    threads: int | None = None  # torch CPU threads (None: torch's default)
    phases: tuple[str, ...] = PHASES
    plant: str | None = None  # testing only: a wrong objective or training (module doc)
    compile: bool = False  # --compile: phases 1 and 3 with the model under torch.compile


DEVICE_PLAN = Plan(models=("resnet110", "wrn28_10"), batch=256, ms=(4, 10), warmup=5, reps=20,
                   check_model="resnet110", check_batch=64, check_m=4,
                   agree_model="resnet110", agree_m=4, agree_examples=512, agree_rounds=4,
                   warm_train_steps=50, warm_train_batch=256,
                   certify_batches=(400, 1000), certify_samples=10_000, certify_reps=5,
                   budget_s=420.0, det_model="resnet20", det_subset=None, det_epochs=2,
                   det_m=2, det_batch=128)
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


def _sig(v: float, digits: int = 3) -> float | None:
    """``v`` to ``digits`` significant digits (None when not finite)."""
    return float(f"{v:.{digits}g}") if math.isfinite(v) else None


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


# --------------------------------------------------------------------------- fp32 vs float64


def _ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy with soft targets, in the logits' own dtype (fp32 or float64)."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1)


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().double().cpu() if p.grad is not None else torch.zeros(p.shape,
                                                                                 dtype=torch.double)
            for p in model.parameters()]


def rel_l2(got: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """‖got − ref‖₂ / ‖ref‖₂ over all tensors together (0 when both are 0, inf when only ref)."""
    num = math.sqrt(sum(float((a - b).pow(2).sum()) for a, b in zip(got, ref, strict=True)))
    den = math.sqrt(sum(float(b.pow(2).sum()) for b in ref))
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def loss_err(got: float, ref: float) -> float:
    """|got − ref| / max(1, |ref|)."""
    return abs(got - ref) / max(1.0, abs(ref))


def draw_copies(augmentation, x: torch.Tensor, y: torch.Tensor, m: int,
                seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """m augmented copies, stacked copies × batch (row k·B + i is copy k of example i).

    Drawn on the CPU from one generator seeded ``seed``, each copy one call of the augmentation
    on the whole batch: the copies ``MaxUpLoss`` draws from the same generator.
    """
    g = torch.Generator().manual_seed(seed)
    parts = [augmentation(x, y, g) for _ in range(m)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def reference_maxup(model: torch.nn.Module, xs: torch.Tensor, ts: torch.Tensor, m: int,
                    mode: str, chunk: int | None) -> dict:
    """MaxUp written from its definition, independent of ``maxup.objective``, in xs's dtype.

    Per-copy losses come from plain forward passes, each example's worst copy is their
    argmax, and the mean over examples of the chosen copies' losses is back-propagated into
    ``model`` (in training mode, BN on batch statistics: ``maxup.bn: batch_stats``). *naive*:
    one forward of all m·B copies with grad, so BN normalises over the whole stack and the
    gradient flows through those statistics. *efficient*: no-grad forwards of ``chunk``
    copies at a time (chunk·B images; None: all) to choose, then one forward of the B chosen
    copies alone with grad. Running statistics change but never reach an output.

    Returns:
        ``{"loss": float, "worst": (B,) int64, "losses": (m, B) float64 CPU,
        "grads": [float64 CPU tensors]}``.
    """
    b = xs.shape[0] // m
    model.zero_grad(set_to_none=True)
    if mode == "naive":
        losses = _ce(model(xs), ts).view(m, b)
        worst = losses.detach().argmax(0)
        loss = losses.gather(0, worst[None])[0].mean()
    elif mode == "efficient":
        size = xs.shape[0] if chunk is None else b * chunk
        with torch.no_grad():
            losses = torch.cat([_ce(model(xs[s:s + size]), ts[s:s + size])
                                for s in range(0, xs.shape[0], size)]).view(m, b)
        worst = losses.argmax(0)
        rows = worst * b + torch.arange(b, device=xs.device)
        loss = _ce(model(xs[rows]), ts[rows]).mean()
    else:
        raise ValueError(f"mode must be 'efficient' or 'naive', got {mode!r}")
    loss.backward()
    return {"loss": float(loss.detach()), "worst": worst.cpu(),
            "losses": losses.detach().double().cpu(), "grads": _grads(model)}


def erm_baselines(model: torch.nn.Module, xs: torch.Tensor, ts: torch.Tensor, m: int,
                  mode: str) -> list[dict]:
    """Plain cross-entropy of each copy k < m with the forward of ``mode``'s gradient pass.

    *efficient*: copy k's B images forwarded alone (the shape of the efficient objective's
    grad forward); *naive*: copy k's rows of one forward of the whole stack (BN over all m·B
    copies, the naive objective's forward). Returns one ``{"loss", "grads"}`` per copy.
    """
    b = xs.shape[0] // m
    out = []
    if mode == "naive":
        losses = _ce(model(xs), ts).view(m, b)
        for k in range(m):
            model.zero_grad(set_to_none=True)
            loss = losses[k].mean()
            loss.backward(retain_graph=k < m - 1)
            out.append({"loss": float(loss.detach()), "grads": _grads(model)})
        return out
    for k in range(m):
        model.zero_grad(set_to_none=True)
        loss = _ce(model(xs[k * b:(k + 1) * b]), ts[k * b:(k + 1) * b]).mean()
        loss.backward()
        out.append({"loss": float(loss.detach()), "grads": _grads(model)})
    return out


def judge_mode(ref64: dict, dev: dict, ref32: dict, erm64: list[dict],
               erm32: list[dict]) -> dict:
    """Judge the objective under test (``dev``) against the float64 reference (module doc, 1).

    Args:
        ref64: :func:`reference_maxup` in float64 (``loss``, ``worst``, ``losses``, ``grads``).
        dev: the objective under test on the device in fp32 (``loss``, ``worst``, ``grads``).
        ref32: :func:`reference_maxup` in fp32 on the device (its ``losses`` size the margin).
        erm64, erm32: :func:`erm_baselines` in float64 and in fp32 on the device.

    Returns:
        The JSON-ready comparison with ``passed``.
    """
    erm_grad = [rel_l2(a["grads"], b["grads"]) for a, b in zip(erm32, erm64, strict=True)]
    erm_loss = [loss_err(a["loss"], b["loss"]) for a, b in zip(erm32, erm64, strict=True)]
    grad_allowed = ERM_FACTOR * max(erm_grad) + GRAD_FLOOR
    loss_allowed = ERM_FACTOR * max(erm_loss) + LOSS_FLOOR
    grad = rel_l2(dev["grads"], ref64["grads"])
    loss = loss_err(dev["loss"], ref64["loss"])
    copy_err = float((ref32["losses"] - ref64["losses"]).abs().max())
    margin = max(SELECTION_MARGIN_NATS, SELECTION_MARGIN_FACTOR * copy_err)
    l64 = ref64["losses"]
    if l64.shape[0] > 1:
        top2 = l64.topk(2, dim=0).values
        gaps = top2[0] - top2[1]
    else:
        gaps = torch.full(l64.shape[1:], math.inf, dtype=torch.double)
    judged = gaps > margin
    same = dev["worst"].cpu() == ref64["worst"]
    wrong = ~same & judged
    selection_ok = not bool(wrong.any())
    failed = [name for name, bad in (("loss", loss > loss_allowed),
                                     ("gradient", grad > grad_allowed),
                                     ("selection", not selection_ok)) if bad]
    return {"loss_float64": _finite(ref64["loss"], 10), "loss_device": _finite(dev["loss"], 10),
            "loss_rel_err": _finite(loss, 12), "loss_allowed": _finite(loss_allowed, 12),
            "loss_headroom": _sig(loss_allowed / loss) if loss > 0 else None,
            "grad_rel_l2": _finite(grad, 12), "grad_allowed": _finite(grad_allowed, 12),
            "grad_headroom": _sig(grad_allowed / grad) if grad > 0 else None,
            "erm_grad_rel_l2": [_finite(e, 12) for e in erm_grad],
            "erm_loss_rel_err": [_finite(e, 12) for e in erm_loss],
            "fp32_reference_grad_rel_l2": _finite(rel_l2(ref32["grads"], ref64["grads"]), 12),
            "fp32_reference_loss_rel_err": _finite(loss_err(ref32["loss"], ref64["loss"]), 12),
            "max_copy_loss_err_nats": _finite(copy_err, 12),
            "selection_margin_nats": _finite(margin, 12),
            "examples": int(same.numel()), "judged_examples": int(judged.sum()),
            "judged_mismatches": int(wrong.sum()),
            "near_ties_not_judged": int((~judged).sum()),
            "near_tie_mismatches": int((~same & ~judged).sum()),
            "selection_agreement": _finite(float(same.float().mean())),
            "smallest_float64_gap_where_flipped": (_finite(float(gaps[~same].min()), 10)
                                                   if not bool(same.all()) else None),
            "failed": failed, "passed": not failed}


class _PlantedObjective:
    """A wrong objective behind ``MaxUpLoss``'s interface (testing: the check must fail it)."""

    def __init__(self, inner: MaxUpLoss):
        self.inner = inner

    def __getattr__(self, name):  # m, mode, chunk, draw_copies, selection_losses, ...
        return getattr(self.inner, name)

    def _output(self, loss, logits_all, ts, chosen, b, m) -> MaxUpOutput:
        rows = chosen * b + torch.arange(b, device=chosen.device)
        return MaxUpOutput(loss, logits_all.detach()[rows], ts[rows], chosen, 0.0,
                           torch.bincount(chosen.cpu(), minlength=m), 0.0)


class MeanCopyLoss(_PlantedObjective):
    """Back-propagates the MEAN of the m copies' losses (no max); reports the argmax as chosen."""

    def __call__(self, model, x, y, generator, m=None) -> MaxUpOutput:
        m = self.inner.m if m is None else m
        if m == 1:
            return self.inner(model, x, y, generator, m=1)
        b = x.shape[0]
        xs, ts = self.inner.draw_copies(x, y, generator, m)
        logits = model(xs)
        losses = soft_cross_entropy(logits, ts).view(m, b)
        return self._output(losses.mean(), logits, ts, losses.detach().argmax(0), b, m)


class RandomCopyLoss(_PlantedObjective):
    """Back-propagates one copy per example picked uniformly at random, not the worst."""

    def __init__(self, inner: MaxUpLoss, seed: int = PLANT_SEED):
        super().__init__(inner)
        self.picker = torch.Generator().manual_seed(seed)

    def __call__(self, model, x, y, generator, m=None) -> MaxUpOutput:
        m = self.inner.m if m is None else m
        if m == 1:
            return self.inner(model, x, y, generator, m=1)
        b = x.shape[0]
        xs, ts = self.inner.draw_copies(x, y, generator, m)
        pick = torch.randint(0, m, (b,), generator=self.picker).to(x.device)
        rows = pick * b + torch.arange(b, device=x.device)
        if self.inner.mode == "naive":
            logits = model(xs)
            loss = soft_cross_entropy(logits, ts).view(m, b).gather(0, pick[None])[0].mean()
            return self._output(loss, logits, ts, pick, b, m)
        logits = model(xs[rows])
        return MaxUpOutput(soft_cross_entropy(logits, ts[rows]).mean(), logits.detach(),
                           ts[rows], pick, 0.0, torch.bincount(pick.cpu(), minlength=m), 0.0)


def objective_under_test(plan: Plan, augmentation, mode: str):
    """``MaxUpLoss`` as the engine builds it (bn=batch_stats), or the planted wrong one."""
    objective = MaxUpLoss(augmentation, m=plan.check_m, num_classes=CLASSES, mode=mode,
                          bn="batch_stats", chunk=CHECK_CHUNK)
    if plan.plant == "mean-copy":
        return MeanCopyLoss(objective)
    if plan.plant == "random-copy":
        return RandomCopyLoss(objective)
    return objective


def check_fp32(plan: Plan, device: torch.device) -> dict:
    """The objective in fp32 on ``device`` vs float64 on the CPU, per mode (module doc, 1)."""
    base = cifar_model(plan.check_model).train()
    xs_all, ys_all = synthetic_cifar("test")
    x, y = xs_all[:plan.check_batch], ys_all[:plan.check_batch]
    m, aug = plan.check_m, paper_augmentation()
    xs, ts = draw_copies(aug, x, y, m, COPY_SEED)
    xs64, ts64 = xs.double(), ts.double()
    xs_d, ts_d = xs.to(device), ts.to(device)

    def fresh(dtype: torch.dtype, where: torch.device) -> torch.nn.Module:
        return copy.deepcopy(base).to(device=where, dtype=dtype).train()

    cpu = torch.device("cpu")
    out = {"compared": f"{device.type} fp32 vs cpu float64", "model": plan.check_model,
           "batch": plan.check_batch, "m": m, "chunk": CHECK_CHUNK, "bn": "batch_stats",
           "tf32": False, "plant": plan.plant, "compiled": plan.compile,
           "criteria": {
               "grad": f"‖Δg‖₂/‖g64‖₂ ≤ {ERM_FACTOR:g}·ERM + {GRAD_FLOOR:g} (ERM: largest "
                       "fp32 error of plain cross-entropy of one copy, over the m copies)",
               "loss": f"|ΔL|/max(1, |L64|) ≤ {ERM_FACTOR:g}·ERM + {LOSS_FLOOR:g}",
               "selection": f"same copy as float64 where the float64 top-2 gap > "
                            f"max({SELECTION_MARGIN_NATS:g} nats, "
                            f"{SELECTION_MARGIN_FACTOR:g} × largest fp32 per-copy loss error)"},
           "device_note": (None if device.type == "cuda" else
                           "no CUDA device: the device under test is the CPU in fp32"),
           "modes": {}}
    for mode in ("efficient", "naive"):
        ref64 = reference_maxup(fresh(torch.double, cpu), xs64, ts64, m, mode, CHECK_CHUNK)
        erm64 = erm_baselines(fresh(torch.double, cpu), xs64, ts64, m, mode)
        with strict_fp32():
            ref32 = reference_maxup(fresh(torch.float32, device), xs_d, ts_d, m, mode,
                                    CHECK_CHUNK)
            erm32 = erm_baselines(fresh(torch.float32, device), xs_d, ts_d, m, mode)
            objective = objective_under_test(plan, DrawOnCPU(aug), mode)
            model = fresh(torch.float32, device)
            model.zero_grad(set_to_none=True)
            # --compile: the same parameters behind torch.compile (train.compile's path)
            forward = model
            if plan.compile:
                from maxup.engine.compiling import compile_model

                forward = compile_model(model)
            o = objective(forward, x.to(device), y.to(device),
                          torch.Generator().manual_seed(COPY_SEED))
            o.loss.backward()
            dev = {"loss": float(o.loss.detach()), "worst": o.worst.cpu(),
                   "grads": _grads(model)}
        out["modes"][mode] = judge_mode(ref64, dev, ref32, erm64, erm32)
    out["failed"] = [f"{mode}: {', '.join(r['failed'])}" for mode, r in out["modes"].items()
                     if r["failed"]]
    out["passed"] = not out["failed"]
    return out


# --------------------------------------------------------------------------- bf16 selection


def selection_stats(l32: torch.Tensor, other: torch.Tensor) -> dict:
    """Agreement of two (m, N) per-copy loss tables' argmax, judged against fp32 ``l32``.

    Near-ties are examples whose fp32 top-2 gap is under ``NEAR_TIE_NATS``; the regret of an
    example is the fp32 loss of the fp32 pick minus the fp32 loss of the other table's pick.
    """
    pick32, pick = l32.argmax(0), other.argmax(0)
    same = pick32 == pick
    top2 = l32.topk(2, dim=0).values
    tie = (top2[0] - top2[1]) < NEAR_TIE_NATS
    regret = top2[0] - l32.gather(0, pick[None])[0]
    clear = ~tie
    return {"examples": int(same.numel()), "agreement_rate": _finite(float(same.float().mean())),
            "near_tie_share": _finite(float(tie.float().mean())),
            "non_tied_examples": int(clear.sum()),
            "agreement_without_near_ties": (_finite(float(same[clear].float().mean()))
                                            if bool(clear.any()) else None),
            "mean_regret_nats": _finite(float(regret.mean()), 8),
            "max_regret_nats": _finite(float(regret.max()), 8)}


def judge_bf16(stats: dict, enforced: bool) -> dict:
    """The phase-2 verdict on :func:`selection_stats` of fp32 vs bf16 (module doc, 2)."""
    agree = stats["agreement_without_near_ties"]
    meets_agreement = agree is not None and agree >= AGREEMENT_MIN
    meets_regret = stats["mean_regret_nats"] is not None and (
        stats["mean_regret_nats"] <= REGRET_MAX_NATS)
    failed = [name for name, ok in (("agreement_without_near_ties", meets_agreement),
                                    ("mean_regret", meets_regret)) if not ok]
    return {"agreement_min": AGREEMENT_MIN, "regret_max_nats": REGRET_MAX_NATS,
            "meets_agreement": meets_agreement, "meets_regret": meets_regret,
            "meets_criteria": not failed, "failed": failed,
            "passed": not failed or not enforced}


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
           **stats, "near_tie_nats": NEAR_TIE_NATS, "enforced": enforced,
           "not_enforced_reason": None if enforced else (
               "CPU: bf16 autocast here runs the CPU's kernels, not the GPU path under test; "
               "the criteria are reported, not enforced"),
           "tf32_vs_fp32": selection_stats(l32_all, torch.cat(ltf, dim=1)) if ltf else None}
    out.update(judge_bf16(stats, enforced))
    return out


# --------------------------------------------------------------------------- determinism


def determinism_config(plan: Plan, device: torch.device) -> dict:
    """The run config both trainings of phase 3 use (``train.deterministic: true``)."""
    return {"seed": 0, "model": {"name": plan.det_model},
            "data": {"name": "synthetic", "subset": plan.det_subset},
            "augment": {"ops": ["crop_flip", "cutout"], "cutout_size": 8, "crop_padding": 2},
            "maxup": {"m": plan.det_m, "warmup_epochs": 0},
            "optim": {"lr": 0.05, "schedule": "constant"},
            "train": {"epochs": plan.det_epochs, "batch_size": plan.det_batch,
                      "eval_batch_size": 512, "device": device.type, "deterministic": True,
                      "compile": plan.compile, "progress": False}}


@contextlib.contextmanager
def unseeded_weight_noise(scale: float = 1e-6):
    """Inside, every ``torch.optim.SGD`` step adds N(0, scale²) noise to each parameter.

    The noise comes from a generator seeded from ``os.urandom``: the engine re-seeds the
    global generators every epoch, so noise drawn from them would repeat run to run.
    """
    original = torch.optim.SGD.step
    seed = int.from_bytes(os.urandom(8), "little") >> 1
    generators: dict = {}

    def noisy_step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    g = generators.get(p.device)
                    if g is None:
                        g = generators[p.device] = torch.Generator(p.device).manual_seed(seed)
                    p.add_(torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype),
                           alpha=scale)
        return result

    torch.optim.SGD.step = noisy_step
    try:
        yield
    finally:
        torch.optim.SGD.step = original


def _untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING_FIELDS} for h in history]


def compare_runs(state_a: dict, state_b: dict, history_a: list[dict],
                 history_b: list[dict]) -> dict:
    """Bit-equality of two model state dicts and equality of two histories (timing aside)."""
    keys = sorted(set(state_a) | set(state_b))
    differing = [k for k in keys if k not in state_a or k not in state_b
                 or not torch.equal(state_a[k], state_b[k])]
    max_diff = 0.0
    for k in differing:
        a, b = state_a.get(k), state_b.get(k)
        if a is not None and b is not None and a.shape == b.shape:
            max_diff = max(max_diff, float((a.double() - b.double()).abs().max()))
    ha, hb = _untimed(history_a), _untimed(history_b)
    first = None
    if ha != hb:
        if len(ha) != len(hb):
            first = {"epochs": [len(ha), len(hb)]}
        else:
            for i, (ea, eb) in enumerate(zip(ha, hb, strict=True)):
                key = next((k for k in sorted(set(ea) | set(eb)) if ea.get(k) != eb.get(k)),
                           None)
                if key is not None:
                    first = {"epoch": i + 1, "field": key, "a": ea.get(key), "b": eb.get(key)}
                    break
    return {"model_tensors": len(keys), "differing_tensors": len(differing),
            "first_differing_tensors": differing[:5],
            "max_abs_difference": _finite(max_diff, 12), "weights_identical": not differing,
            "histories_identical": ha == hb, "first_history_difference": first,
            "ignored_fields": list(TIMING_FIELDS)}


def check_determinism(plan: Plan, device: torch.device, work_dir: Path) -> dict:
    """Two deterministic engine trainings on ``device`` must agree bit for bit (module doc, 3)."""
    from maxup.checkpoint import load_checkpoint  # the engine imports the config (PyYAML)
    from maxup.determinism import guarantee
    from maxup.engine import train

    cfg = determinism_config(plan, device)
    runs = {}
    for name in ("a", "b"):
        folder = work_dir / f"run_{name}"
        shutil.rmtree(folder, ignore_errors=True)
        broken = plan.plant == "nondeterministic" and name == "b"
        t0 = time.perf_counter()
        with unseeded_weight_noise() if broken else contextlib.nullcontext():
            record = train(cfg, folder, resume=False, log=None)
        state = load_checkpoint(folder / "checkpoints" / "last.pt")["model"]
        runs[name] = {"record": record, "state": state, "wall_s": time.perf_counter() - t0}
    a, b = runs["a"], runs["b"]
    cmp = compare_runs(a["state"], b["state"], a["record"]["history"], b["record"]["history"])
    statuses = [a["record"]["status"], b["record"]["status"]]
    failed = [name for name, ok in (("completed", statuses == ["completed"] * 2),
                                    ("weights", cmp["weights_identical"]),
                                    ("history", cmp["histories_identical"])) if not ok]
    last = a["record"]["history"][-1] if a["record"]["history"] else {}
    return {"device": str(device), "config": cfg, "runs": [str(work_dir / "run_a"),
                                                           str(work_dir / "run_b")],
            "statuses": statuses, "run_wall_s": [_finite(r["wall_s"], 2) for r in (a, b)],
            "promise": guarantee(device, True), "plant": plan.plant,
            "last_epoch": {k: _finite(last.get(k)) for k in ("train_loss", "test_loss",
                                                               "test_acc")},
            **cmp, "failed": failed, "passed": not failed}


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
                           "cudnn.benchmark": torch.backends.cudnn.benchmark},
           "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(device_name=p.name, capability=f"{p.major}.{p.minor}",
                   device_memory_gib=round(p.total_memory / 2**30, 1),
                   multiprocessors=p.multi_processor_count)
    else:
        env["device_name"] = "cpu (no CUDA device used)"
    return env


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
    if plan.get("plant"):
        lines[2:2] = [f"**PLANTED: {plan['plant']}** (testing the check; these results are "
                      "not the library's)", ""]
    corr = result.get("correctness", {})
    for key, r in corr.items():
        if r.get("error"):
            lines += [f"## {key}: ERROR", "", f"{r['error']}", ""]
        elif r.get("passed") is False:
            lines.append(f"FAILED: {key}: {', '.join(r.get('failed', []))}")
    if any(r.get("passed") is False and not r.get("error") for r in corr.values()):
        lines.append("")
    fp = corr.get("fp32_vs_float64")
    if fp and not fp.get("error"):
        lines += [f"## fp32 correctness vs float64: {fp['compared']} ({fp['model']}, batch "
                  f"{fp['batch']}, m = {fp['m']}, chunk {fp['chunk']}, BN {fp['bn']}, "
                  "TF32 off)", ""]
        if fp["device_note"]:
            lines += [f"Note: {fp['device_note']}.", ""]
        c = fp["criteria"]
        lines += [f"Criteria: gradient {c['grad']}; loss {c['loss']}; selection: {c['selection']}.",
                  "",
                  "| objective | grad rel. L2 | ERM grad (max over copies) | allowed | headroom | "
                  "loss rel. err | allowed | fp32 reference grad | judged / examples | "
                  "judged mismatches | margin (nats) | near-tie mismatches | passed |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for mode, r in fp["modes"].items():
            erm = max((e for e in r["erm_grad_rel_l2"] if e is not None), default=None)
            lines.append(
                f"| {mode} | {_fmt(r['grad_rel_l2'], '.2e')} | {_fmt(erm, '.2e')} | "
                f"{_fmt(r['grad_allowed'], '.2e')} | {_fmt(r['grad_headroom'], '.3g')} | "
                f"{_fmt(r['loss_rel_err'], '.2e')} | {_fmt(r['loss_allowed'], '.2e')} | "
                f"{_fmt(r['fp32_reference_grad_rel_l2'], '.2e')} | "
                f"{r['judged_examples']} / {r['examples']} | {r['judged_mismatches']} | "
                f"{_fmt(r['selection_margin_nats'], '.1e')} | {r['near_tie_mismatches']} | "
                f"{r['passed']}{' (' + ', '.join(r['failed']) + ')' if r['failed'] else ''} |")
        lines += ["", "Headroom is allowed ÷ measured (> 1 passes). The fp32 reference is this "
                  "script's own MaxUp in fp32 on the device: what a correct fp32 implementation "
                  "costs.", ""]
    bf = corr.get("bf16_selection")
    if bf and not bf.get("error"):
        enforced = ("enforced" if bf["enforced"]
                    else f"not enforced: {bf['not_enforced_reason']}")
        lines += [f"## bf16 selection ({bf['model']}, m = {bf['m']}, fixed batch of "
                  f"{bf['fixed_batch']} × {bf['draws_of_copies']} draws of copies; {enforced})",
                  "",
                  f"- agreement with the fp32 pick (TF32 off) on the {bf['non_tied_examples']} "
                  f"examples that are not near-ties (fp32 top-2 gap ≥ {bf['near_tie_nats']} "
                  f"nats): **{_fmt(bf['agreement_without_near_ties'], '.4f')}** (at least "
                  f"{bf['agreement_min']})",
                  f"- mean regret of the bf16 pick: **{_fmt(bf['mean_regret_nats'], '.2e')}** "
                  f"nats (at most {bf['regret_max_nats']:g}; max "
                  f"{_fmt(bf['max_regret_nats'], '.2e')})",
                  f"- raw agreement over all {bf['examples']} examples "
                  f"{_fmt(bf['agreement_rate'], '.4f')}; near-tie share "
                  f"{_fmt(bf['near_tie_share'], '.4f')}; criteria met: {bf['meets_criteria']}",
                  f"- model after {bf['warm_train']['erm_steps']} ERM steps: loss "
                  f"{_fmt(bf['warm_train']['first_loss'], '.3f')} → "
                  f"{_fmt(bf['warm_train']['last_loss'], '.3f')}"]
        if bf.get("tf32_vs_fp32"):
            tf = bf["tf32_vs_fp32"]
            lines.append(f"- TF32 (the engine's fp32 default on CUDA) vs strict fp32: agreement "
                         f"{_fmt(tf['agreement_rate'], '.4f')} (without near-ties "
                         f"{_fmt(tf['agreement_without_near_ties'], '.4f')}), mean regret "
                         f"{_fmt(tf['mean_regret_nats'], '.2e')} nats")
        lines.append("")
    det = corr.get("determinism")
    if det and not det.get("error"):
        cfg = det["config"]
        lines += [f"## Determinism: two deterministic trainings on {det['device']} "
                  f"({cfg['model']['name']}, synthetic subset {cfg['data']['subset']}, "
                  f"{cfg['train']['epochs']} epochs, m = {cfg['maxup']['m']})", "",
                  f"- statuses {det['statuses']}; wall {det['run_wall_s']} s",
                  f"- model tensors bit-identical: **{det['weights_identical']}** "
                  f"({det['differing_tensors']} of {det['model_tensors']} differ; max |Δ| "
                  f"{_fmt(det['max_abs_difference'], '.2e')})",
                  f"- histories identical (timing fields aside): "
                  f"**{det['histories_identical']}**"
                  + (f" (first difference: {det['first_history_difference']})"
                     if det["first_history_difference"] else ""),
                  f"- promise: {det['promise']}", ""]
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


def exit_status(result: dict) -> int:
    """1 when an enforced check of the chosen phases failed (or never ran), else 0."""
    corr = result.get("correctness", {})
    phases = result.get("plan", {}).get("phases", PHASES)
    parts = [corr.get(key) for phase, key in ENFORCED.items() if phase in phases]
    return 0 if all(p is not None and p.get("passed") for p in parts) else 1


def run(plan: Plan, device: torch.device, out_dir: Path, mode: str,
        det_dir: Path | None = None) -> dict:
    """Run the chosen phases in order, writing ``gpu_check.json``/``.md`` after each measurement.

    ``det_dir``: where the determinism phase's two trainings go (default ``out_dir/determinism``).
    """
    result: dict = {"schema": SCHEMA, "mode": mode,
                    "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "plan": asdict(plan), "environment": environment(device),
                    "correctness": {}, "speed": {"rows": [], "ratios": []},
                    "certification": {"rows": []}, "skipped": [], "phase_s": {}}
    deadline = _T0 + plan.budget_s
    det_dir = det_dir or out_dir / "determinism"

    def save():
        result["wall_s"] = round(_elapsed(), 1)
        result["modules"] = {f"{name}_imported": name in sys.modules for name in WATCHED_MODULES}
        result["exit_status"] = exit_status(result)
        atomic_write_json(out_dir / "gpu_check.json", result)
        atomic_write_text(out_dir / "gpu_check.md", render_markdown(result))

    # Looked up when called, so a test can replace a check in the module.
    checks = (("fp32", lambda: check_fp32(plan, device)),
              ("bf16", lambda: check_bf16(plan, device)),
              ("determinism", lambda: check_determinism(plan, device, det_dir)))
    save()
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    # Counted from the script's start, like the budget: the imports are not free.
    signal.alarm(max(1, math.ceil(_T0 + plan.budget_s + HARD_STOP_GRACE_S - time.monotonic())))
    try:
        # An unexpected error is recorded and the run goes on: one run on a lent device
        # should bring back everything that can be measured.
        for phase, check in checks:
            if phase not in plan.phases:
                continue
            key, t0 = ENFORCED[phase], time.monotonic()
            try:
                result["correctness"][key] = check()
            except Exception as exc:
                result["correctness"][key] = {"passed": False, "error": _error(exc)}
            result["phase_s"][phase] = round(time.monotonic() - t0, 2)
            save()
        for model in plan.models:
            t0 = time.monotonic()
            if "speed" in plan.phases:
                for precision in plan.precisions:
                    for cl in plan.channels_last:
                        for config in step_configs(plan.ms):
                            row = speed_row(model, precision, cl, config, plan, device,
                                            deadline)
                            result["speed"]["rows"].append(row)
                            if row["status"] != "ok":
                                result["skipped"].append(
                                    f"speed {model} {precision} channels_last={cl} {config}: "
                                    f"{row['status']}")
                            result["speed"]["ratios"] = step_ratios(result["speed"]["rows"],
                                                                    plan.ms)
                            save()
                result["phase_s"][f"speed {model}"] = round(time.monotonic() - t0, 2)
            t0 = time.monotonic()
            if "certify" in plan.phases:
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
                result["phase_s"][f"certify {model}"] = round(time.monotonic() - t0, 2)
    except HardStop as stop:
        result["stopped"] = str(stop)
    except Exception as exc:  # e.g. a sticky CUDA error outside any one measurement
        result["stopped"] = f"error: {_error(exc)}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    save()
    return result


def _phases(text: str) -> tuple[str, ...]:
    chosen = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in chosen if p not in PHASES]
    if bad or not chosen:
        raise argparse.ArgumentTypeError(
            f"got {text!r}; allowed: a comma-separated subset of {','.join(PHASES)}")
    return tuple(p for p in PHASES if p in chosen)  # always run in the documented order


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the JSON and .md")
    parser.add_argument("--tiny", action="store_true",
                        help="small model, batch and n on the CPU (< 1 min): the smoke test")
    parser.add_argument("--device", help="default: cuda if visible (cpu with --tiny)")
    parser.add_argument("--budget-s", type=float, help="time budget, s (default 420; tiny 120)")
    parser.add_argument("--models", help="comma-separated speed/certification models, in order")
    parser.add_argument("--reps", type=int, help="timed steps per configuration")
    parser.add_argument("--phases", type=_phases,
                        help=f"comma-separated phases to run (default all: {','.join(PHASES)})")
    parser.add_argument("--det-dir", type=Path,
                        help="folder for the determinism phase's two trainings "
                             "(default OUT/determinism)")
    parser.add_argument("--compile", action="store_true",
                        help="run phases 1 and 3 with the model under torch.compile "
                             "(train.compile)")
    parser.add_argument("--plant", choices=PLANTS, help=argparse.SUPPRESS)  # testing only
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
    if device.type == "cuda":
        # cuBLAS reads its workspace setting when its handle is created: set it before the
        # first CUDA use, so the determinism phase's deterministic mode holds.
        from maxup.determinism import prepare_cuda_environment

        prepare_cuda_environment()
    if args.budget_s is not None:
        plan = replace(plan, budget_s=args.budget_s)
    if args.models:
        plan = replace(plan, models=tuple(m for m in args.models.split(",") if m))
    if args.reps is not None:
        plan = replace(plan, reps=args.reps)
    if args.phases:
        plan = replace(plan, phases=args.phases)
    if args.plant:
        plan = replace(plan, plant=args.plant)
    if args.compile:
        plan = replace(plan, compile=True)
    if plan.threads is not None:
        torch.set_num_threads(plan.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    mode = "tiny" if args.tiny else "full"
    print(f"gpu_check ({mode}) on {device}, phases {','.join(plan.phases)}"
          + (f", PLANTED {plan.plant}" if plan.plant else "")
          + f": writing {args.out}/gpu_check.json and .md", flush=True)
    result = run(plan, device, args.out, mode, det_dir=args.det_dir)
    print(render_markdown(result), flush=True)
    if result.get("stopped"):
        return 3
    return result["exit_status"]


if __name__ == "__main__":
    sys.exit(main())
