"""The training engine: one loop for a plain process, a Ray Tune trial and a Ray Train worker.

``train(config, out_dir)`` takes a plain config (dict or RunConfig), trains, evaluates every
epoch, checkpoints atomically every ``train.checkpoint_every`` epochs and at the end, writes
the record (docs/records.md), and returns it. The few framework touch-points are arguments:

- ``reporter(metrics, checkpoint_dir)`` is called after every epoch (Tune / Train report);
- ``dist`` says which data-parallel rank this process is (Ray Train sets it up);
- ``record_path`` / ``record_extra`` let the sweep driver place and label the record.

Tasks: image classification and language modelling are two implementations of one small
interface, :class:`Task` (how an epoch trains, how it is evaluated and which metrics must be
finite, what a checkpoint holds beyond model and optimiser, what the record learns about the
data); :func:`build_task` picks one from the config (``lm`` set: :class:`maxup.lm.task.LMTask`,
else :class:`ImageTask`). The loop, checkpoints, exact resume, Ray Train/Tune reporting and
records are this module's and the same for both.

Exact resume: every source of randomness (data order, augmentation draws, dropout, data-loader
workers) is re-seeded at the start of each epoch from (seed, epoch, rank), and the learning
rate is a pure function of the epoch; so a run restored from the checkpoint of epoch k
continues exactly as an uninterrupted run would, with no RNG state to restore. A task may
also checkpoint inside an epoch (language modelling, ``lm.checkpoint_windows``): the loop hands
it its save function (``task.save_mid_epoch``), and the task's checkpoint entry then holds the
partial epoch — its position, RNG states and running sums — from which it continues.

No hidden global state: that re-seeding uses the process's global Python, NumPy and torch
generators (dropout and data-loader workers draw from them), so ``train`` saves them on entry
and restores them on exit, however it exits; and it never changes torch's thread settings
(the Ray worker and task functions that own their process set those).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from maxup import identity, records
from maxup.augment import build_augmentation
from maxup.checkpoint import CHECKPOINT_FORMAT as CHECKPOINT_FORMAT  # re-exported
from maxup.checkpoint import load_checkpoint as load_checkpoint  # re-exported
from maxup.checkpoint import save_checkpoint as save_checkpoint  # re-exported
from maxup.config import RunConfig, from_dict, to_dict
from maxup.determinism import deterministic_mode
from maxup.errors import UsageError
from maxup.io import atomic_write_json, atomic_write_text
from maxup.objective import MaxUpLoss

Reporter = Callable[[dict, "Path | None"], None]


class NonFiniteLoss(Exception):
    """Raised inside the loop when the loss is NaN or infinite."""

    reason = "non-finite loss"

    def __init__(self, epoch: int, step: int | None, value: float, message: str = ""):
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(message or f"non-finite loss {value} at epoch {epoch}, step {step}")


class NonFiniteMetric(NonFiniteLoss):
    """Raised when an evaluation metric is NaN or infinite: such a run is never completed."""

    reason = "non-finite metric"

    def __init__(self, epoch: int, metric: str, value: float):
        super().__init__(epoch, None, value, f"non-finite {metric} {value} at epoch {epoch}")
        self.metric = metric


def _check_finite(metrics: dict, epoch: int,
                  keys: tuple[str, ...] = ("test_loss", "test_acc", "test_top5")) -> None:
    """Raise :class:`NonFiniteMetric` for a NaN/inf evaluation metric (the sums behind them
    are all-reduced, so every rank raises together)."""
    for key in keys:
        value = metrics.get(key)
        if value is not None and not math.isfinite(value):
            raise NonFiniteMetric(epoch, key, value)


@dataclass
class DistContext:
    """Which data-parallel process this is. ``world_size == 1``: a plain process."""

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# --------------------------------------------------------------------------- helpers

def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_everything(seed: int, device: torch.device | None = None) -> None:
    """Seed the global Python, NumPy and torch CPU generators, and ``device``'s if CUDA.

    Args:
        seed: a non-negative integer (NumPy takes it modulo 2**32).
        device: the training device; for a CUDA device its generator is seeded too.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    # Not torch.manual_seed: it also seeds every CUDA device (lazily, at CUDA's first use,
    # when CUDA is not initialised yet), which train() could then not give back to its caller.
    torch.default_generator.manual_seed(seed)
    if device is not None and device.type == "cuda":
        torch.cuda.default_generators[_cuda_index(device)].manual_seed(seed)


def _cuda_index(device: torch.device) -> int:
    """The index of a CUDA device (``cuda`` alone means the current one); initialises CUDA."""
    torch.cuda.init()  # the generators exist only once CUDA is initialised
    return device.index if device.index is not None else torch.cuda.current_device()


def rng_states(device: torch.device) -> dict:
    """The global generators' states: Python's ``random``, NumPy's legacy global generator,
    torch's CPU generator and, for a CUDA ``device``, that device's generator; as plain values
    and tensors (a checkpoint holds them and loads with ``weights_only=True``).

    Args:
        device: the device the code runs on; a CUDA device's generator is included.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, cached),
           "torch": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(_cuda_index(device))
    return out


def set_rng_states(states: dict, device: torch.device) -> None:
    """Put back the global generators' states :func:`rng_states` returned."""
    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], _cuda_index(device))


@contextlib.contextmanager
def global_rng_preserved(device: torch.device):
    """Run the block, then put the global RNG states (:func:`rng_states`) back as they were on
    entry, also when the block raises.

    Args:
        device: the device the code inside runs on; a CUDA device's generator is restored too.
    """
    states = rng_states(device)
    try:
        yield
    finally:
        set_rng_states(states, device)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a UsageError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("train.device: got 'cuda' but no CUDA device is visible; allowed: "
                         "auto, cpu")
    return torch.device(name)


def learning_rate(cfg: RunConfig, epoch: int) -> float:
    """Learning rate for 0-based ``epoch`` (per-epoch schedules, as the paper's recipes)."""
    o = cfg.optim
    if o.schedule == "constant":
        return o.lr
    if o.schedule == "cosine":
        return 0.5 * o.lr * (1 + math.cos(math.pi * epoch / cfg.train.epochs))
    return o.lr * o.gamma ** sum(epoch >= m for m in o.milestones)


class _Progress:
    """A minimal per-epoch progress bar on stderr (only when it is a terminal)."""

    def __init__(self, enabled: bool, total: int, epoch: int, epochs: int):
        self.enabled = enabled and sys.stderr.isatty()
        self.total, self.label = total, f"epoch {epoch}/{epochs}"

    def update(self, done: int, loss: float) -> None:
        if self.enabled:
            width = 30
            filled = int(width * done / max(self.total, 1))
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                             f"{done}/{self.total} loss {loss:.4f}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 80 + "\r")
            sys.stderr.flush()


def _all_reduce_sum(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sum ``t`` over all ranks and return it on the CPU.

    NCCL reduces only CUDA tensors (a CPU tensor raises "No backend type associated with
    device type cpu"), so the tensor travels to ``device`` for the collective.
    """
    moved = t.to(device)
    torch.distributed.all_reduce(moved)
    return moved.cpu()


# --------------------------------------------------------------------------- data

class _Batches:
    """Iterate one epoch of (images, labels) batches of a rank's shard.

    All ranks draw the same permutation from the epoch seed and take every world_size-th index,
    truncated to equal length (so DDP ranks run the same number of steps). Tensor-backed
    datasets are sliced directly; others go through a DataLoader with seeded workers.
    """

    def __init__(self, dataset, batch_size: int, *, seed: int, rank: int, world: int,
                 num_workers: int):
        self.dataset, self.batch_size = dataset, batch_size
        n = len(dataset)
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=g)
        per_rank = n // world
        self.indices = perm[rank::world][:per_rank]
        self.seed, self.num_workers = seed, num_workers

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __iter__(self):
        ds = self.dataset
        if hasattr(ds, "images") and hasattr(ds, "labels") and not getattr(ds, "transform", None):
            for start in range(0, len(self.indices), self.batch_size):
                idx = self.indices[start:start + self.batch_size]
                yield ds.images[idx], ds.labels[idx]
            return
        sampler = self.indices.tolist()
        loader = torch.utils.data.DataLoader(
            ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
            worker_init_fn=_seed_worker, persistent_workers=False,
        )
        yield from loader


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _eval_batches(dataset, batch_size: int, rank: int, world: int):
    n = len(dataset)
    idx = torch.arange(rank, n, world)
    if hasattr(dataset, "images") and hasattr(dataset, "labels"):
        for s in range(0, len(idx), batch_size):
            j = idx[s:s + batch_size]
            yield dataset.images[j], dataset.labels[j]
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=idx.tolist())
    yield from loader


# --------------------------------------------------------------------------- the run

@dataclass
class Run:
    """Everything built from a config: data, model, optimiser, objective."""

    cfg: RunConfig
    device: torch.device
    train_set: Any
    test_set: Any
    num_classes: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    objective: MaxUpLoss


def build_run(cfg: RunConfig, device: torch.device) -> Run:
    """Build datasets, model, optimiser and objective for ``cfg`` on ``device``.

    Seeds the global generators for the model's initialisation (:func:`seed_everything`);
    :func:`train` runs this inside :func:`global_rng_preserved`.
    """
    from maxup.data import build_dataset, dataset_info
    from maxup.models import build_model

    info = dataset_info(cfg.data.name)
    num_classes = cfg.model.num_classes or info.num_classes
    common = dict(root=cfg.data.root, download=cfg.data.download)
    train_set = build_dataset(cfg.data.name, split="train",
                              train_transform=cfg.data.train_transform,
                              subset=cfg.data.subset, seed=cfg.seed, **common)
    test_set = build_dataset(cfg.data.name, split="test", **common)
    seed_everything(derive_seed(cfg.seed, "init"), device)
    model = build_model(cfg.model.name, num_classes=num_classes, in_channels=info.in_channels,
                        mean=info.mean, std=info.std, dropout=cfg.model.dropout,
                        weights=cfg.model.weights, image_size=tuple(info.image_size))
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Weight decay applies to every parameter, biases and BN affine ones included, as in the
    # Cutout/CutMix reference code the paper builds on.
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                nesterov=cfg.optim.nesterov, weight_decay=cfg.optim.weight_decay)
    autocast = None
    if cfg.train.precision == "bf16" and device.type == "cuda":
        def autocast():
            return torch.autocast("cuda", dtype=torch.bfloat16)
    objective = MaxUpLoss(build_augmentation(cfg.augment, num_classes), cfg.maxup.m, num_classes,
                          mode=cfg.maxup.mode, bn=cfg.maxup.bn, chunk=cfg.maxup.chunk,
                          autocast=autocast)
    return Run(cfg, device, train_set, test_set, num_classes, model, optimizer, objective)


def evaluate(model: nn.Module, dataset, *, device: torch.device, batch_size: int,
             num_classes: int, dist: DistContext, channels_last: bool = False,
             autocast=None) -> dict:
    """Clean test-set loss (nats), top-1 and top-5 accuracy (percent).

    With ``dist.world_size > 1`` each rank evaluates its shard and the sums are all-reduced.
    """
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # loss, top1, top5, count
    ctx = autocast or contextlib.nullcontext
    with torch.inference_mode():
        for x, y in _eval_batches(dataset, batch_size, dist.rank, dist.world_size):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with ctx():
                logits = model(x)
            logits = logits.float()
            sums[0] += F.cross_entropy(logits, y, reduction="sum").item()
            k = min(5, num_classes)
            topk = logits.topk(k, dim=1).indices
            hit = topk == y[:, None]
            sums[1] += hit[:, 0].sum().item()
            sums[2] += hit.any(dim=1).sum().item()
            sums[3] += len(y)
    if dist.world_size > 1 and torch.distributed.is_initialized():
        sums = _all_reduce_sum(sums, device)
    loss, top1, top5, count = sums.tolist()
    return {
        "test_loss": loss / count,
        "test_acc": 100.0 * top1 / count,
        "test_top5": 100.0 * top5 / count if num_classes > 5 else None,
    }


def train_epoch(run: Run, model: nn.Module, epoch: int, dist: DistContext, progress: bool) -> dict:
    """One epoch (0-based ``epoch``) of MaxUp training; returns its metrics.

    Re-seeds the global generators from (seed, epoch, rank) first (:func:`seed_everything`);
    :func:`train` runs this inside :func:`global_rng_preserved`.
    """
    cfg = run.cfg
    epoch_seed = derive_seed(cfg.seed, epoch, dist.rank)
    seed_everything(epoch_seed, run.device)
    gen = torch.Generator(device=run.device).manual_seed(derive_seed(epoch_seed, "augment"))
    lr = learning_rate(cfg, epoch)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    maxup_active = epoch >= cfg.maxup.warmup_epochs and cfg.maxup.m > 1
    m = cfg.maxup.m if maxup_active else 1
    local_batch = cfg.train.batch_size // dist.world_size
    batches = _Batches(run.train_set, local_batch, seed=derive_seed(cfg.seed, epoch, "order"),
                       rank=dist.rank, world=dist.world_size, num_workers=cfg.data.num_workers)
    bar = _Progress(progress and dist.is_main, len(batches), epoch + 1, cfg.train.epochs)
    model.train()
    loss_sum = correct = seen = 0.0
    gap_sum, wins = 0.0, torch.zeros(m, dtype=torch.long)
    selection_s = 0.0
    distributed = dist.world_size > 1 and torch.distributed.is_initialized()
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(batches):
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        if cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = run.objective(model, x, y, gen, m=m)
        value = float(out.loss.detach())
        if distributed:
            # All ranks stop at the same step: one stopping alone would leave the others
            # waiting in DDP's gradient all-reduce until the collective timeout.
            total = float(_all_reduce_sum(torch.tensor([value], dtype=torch.float64),
                                          run.device))
            if not math.isfinite(total):
                raise NonFiniteLoss(epoch + 1, step, value if not math.isfinite(value) else total)
        elif not math.isfinite(value):
            raise NonFiniteLoss(epoch + 1, step, value)
        run.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        run.optimizer.step()
        b = x.shape[0]
        loss_sum += value * b
        correct += float((out.logits.argmax(1) == out.targets.argmax(1)).sum())
        seen += b
        gap_sum += out.gap * b
        wins += out.wins
        selection_s += out.selection_s
        bar.update(step + 1, loss_sum / seen)
    bar.close()
    train_s = time.perf_counter() - t0
    if distributed:
        # Training metrics over the whole global batch, not rank 0's shard.
        sums = torch.tensor([loss_sum, correct, seen, gap_sum], dtype=torch.float64)
        loss_sum, correct, seen, gap_sum = _all_reduce_sum(sums, run.device).tolist()
        wins = _all_reduce_sum(wins, run.device)
    return {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": 100.0 * correct / max(seen, 1),
        "maxup_active": maxup_active,
        "maxup_m": m,
        "maxup_gap": gap_sum / max(seen, 1),
        "maxup_wins": wins.tolist(),
        "train_s": train_s,
        "selection_s": selection_s,
        "images_per_s": seen / max(train_s, 1e-9),
    }


# --------------------------------------------------------------------------- tasks

class Task(Protocol):
    """What the loop needs from a task (image classification, language modelling).

    Attributes:
        model: the network (unwrapped); the loop checkpoints its ``state_dict``.
        optimizer: its ``state_dict`` is checkpointed too.
        ddp: whether the loop wraps the model in DDP for ``world_size > 1`` (a task that
            averages gradients itself says False).
        finite_keys: evaluation metrics that must be finite (else the run fails).
        csv_columns: the columns of ``metrics.csv``.

    Optional: a task with a ``save_mid_epoch`` attribute gets the loop's save function there
    (called on every rank with the number of finished epochs; the main rank writes), and a
    ``resume_note`` string after a resume is appended to the log's "resumed" line.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    ddp: bool
    finite_keys: tuple[str, ...]
    csv_columns: tuple[str, ...]

    def train_epoch(self, model: nn.Module, epoch: int, dist: DistContext,
                    progress: bool) -> dict:
        """Train 0-based ``epoch`` (re-seeding from (seed, epoch, rank)); its metrics,
        including ``epoch``, ``train_s`` and ``selection_s``."""

    def evaluate(self, model: nn.Module, epoch: int, dist: DistContext) -> dict:
        """Evaluation metrics after ``epoch`` (and the task's end-of-epoch bookkeeping)."""

    def checkpoint_state(self) -> dict | None:
        """What exact resume needs beyond model and optimiser (None: nothing)."""

    def load_checkpoint_state(self, state: dict | None) -> None:
        """Restore :meth:`checkpoint_state`'s output."""

    def check_resumable(self, model_state: dict, source: Path) -> None:
        """Refuse (one line) a checkpoint this task cannot continue from."""

    def record_facts(self) -> dict:
        """Facts merged into the record's ``environment`` (e.g. a corpus checksum)."""

    def summary_line(self, metrics: dict, epochs: int) -> str:
        """The one log line of an epoch."""


class ImageTask:
    """Image classification with the MaxUp objective: :func:`train_epoch` and
    :func:`evaluate` on a :class:`Run`; checkpoints hold model and optimiser only."""

    ddp = True
    finite_keys = ("test_loss", "test_acc", "test_top5")

    def __init__(self, run: Run):
        self.run, self.model, self.optimizer = run, run.model, run.optimizer
        self.csv_columns = _CSV_COLUMNS

    def train_epoch(self, model: nn.Module, epoch: int, dist: DistContext,
                    progress: bool) -> dict:
        return train_epoch(self.run, model, epoch, dist, progress)

    def evaluate(self, model: nn.Module, epoch: int, dist: DistContext) -> dict:
        cfg = self.run.cfg
        autocast = self.run.objective.autocast if cfg.train.precision == "bf16" else None
        return evaluate(model, self.run.test_set, device=self.run.device,
                        batch_size=cfg.train.eval_batch_size, num_classes=self.run.num_classes,
                        dist=dist, channels_last=cfg.train.channels_last, autocast=autocast)

    def checkpoint_state(self) -> None:
        return None

    def load_checkpoint_state(self, state: dict | None) -> None:
        return None

    def check_resumable(self, model_state: dict, source: Path) -> None:
        return None

    def record_facts(self) -> dict:
        return {}

    def summary_line(self, metrics: dict, epochs: int) -> str:
        return _summary_line(metrics, epochs)


def build_task(cfg: RunConfig, device: torch.device, dist: DistContext) -> Task:
    """The task of a config: language modelling when ``cfg.lm`` is set, else images.

    Seeds the global generators for the model's initialisation first.
    """
    if getattr(cfg, "lm", None) is not None:
        from maxup.lm.task import LMTask

        seed_everything(derive_seed(cfg.seed, "init"), device)
        return LMTask(cfg, device, rank=dist.rank, world_size=dist.world_size)
    return ImageTask(build_run(cfg, device))


# --------------------------------------------------------------------------- resume

def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


#: What a resumed run reads from its checkpoint.
RESUME_KEYS = ("config", "model", "optimizer", "epoch", "history")

# --------------------------------------------------------------------------- entry point

def train(config: dict | RunConfig, out_dir: str | Path, *, reporter: Reporter | None = None,
          resume: bool = True, dist: DistContext | None = None,
          record_path: str | Path | None = None, record_extra: dict | None = None,
          checkpoint_in: str | Path | None = None,
          log: Callable[[str], None] | None = print, stop_after: int | None = None) -> dict:
    """Train one run and return its record.

    Args:
        config: a RunConfig or nested dict (validated here).
        out_dir: run directory: ``config.json``, ``metrics.csv``, ``metrics.jsonl``,
            ``checkpoints/last.pt`` and (by default) ``record.json``.
        reporter: called as ``reporter(epoch_metrics, checkpoint_dir_or_None)`` after each
            epoch (on every rank; Ray Train needs all ranks to report).
        resume: continue from ``checkpoints/last.pt`` when it exists.
        dist: data-parallel context (default: a plain single process).
        record_path: where to write the record (default ``out_dir/record.json``).
        record_extra: ``sweep``, ``axes``, ``paper_table`` for sweep trials; ``environment``
            (facts merged into the record's environment, e.g. the resources Ray granted).
        checkpoint_in: resume from this checkpoint file instead of ``checkpoints/last.pt``
            (a Ray Train worker restores the run's latest committed checkpoint here).
        log: one summary line per epoch goes here (None: silent).
        stop_after: train only the config's first ``stop_after`` epochs (its schedule
            unchanged; ``maxup verify`` reruns a prefix of a stored trial); the record then
            stays ``running``. None: every epoch.

    The caller's global Python, NumPy and torch RNG states, and its deterministic-algorithm
    settings (``train.deterministic``, :mod:`maxup.determinism`), are the same on return (or
    on an exception) as on entry; torch's thread settings are left alone.
    """
    cfg = config if isinstance(config, RunConfig) else from_dict(config)
    dist = dist or DistContext()
    device = dist.device or resolve_device(cfg.train.device)
    with global_rng_preserved(device), deterministic_mode(cfg.train.deterministic, device):
        try:
            return _train(cfg, Path(out_dir), device=device, dist=dist, reporter=reporter,
                          resume=resume, record_path=record_path, record_extra=record_extra,
                          checkpoint_in=checkpoint_in, log=log, stop_after=stop_after)
        except Exception as exc:
            # Any crash but a refusal (out of memory, a bug, a lost file) ends the record
            # failed, its traceback in failure.detail; never a "running" record forever.
            if dist.is_main and not isinstance(exc, UsageError):
                records.record_crash(record_path or Path(out_dir) / "record.json", exc,
                                     config=to_dict(cfg), extra=record_extra)
            raise


def _train(cfg: RunConfig, out_dir: Path, *, device: torch.device, dist: DistContext,
           reporter: Reporter | None, resume: bool, record_path: str | Path | None,
           record_extra: dict | None, checkpoint_in: str | Path | None,
           log: Callable[[str], None] | None, stop_after: int | None = None) -> dict:
    """The body of :func:`train`, run with the caller's global RNG states set aside."""
    cfg_dict = to_dict(cfg)
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    record_path = Path(record_path) if record_path else out_dir / "record.json"
    extra = record_extra or {}
    log = log if dist.is_main else None

    task = build_task(cfg, device, dist)
    model: nn.Module = task.model
    history: list[dict] = []
    start_epoch = 0
    created = None
    source = Path(checkpoint_in) if checkpoint_in else ckpt_path
    if resume and source.exists():
        state = load_checkpoint(source, require=RESUME_KEYS)
        diff = identity.identity_differences(state["config"], cfg_dict)
        if diff:
            raise UsageError(f"resume: {diff[0]} differs from the checkpoint in {source}; "
                             "allowed: the same config (use a new --out to start afresh)")
        task.check_resumable(state["model"], source)
        _unwrap(model).load_state_dict(state["model"])
        task.optimizer.load_state_dict(state["optimizer"])
        task.load_checkpoint_state(state.get("task"))
        start_epoch, history = state["epoch"], list(state["history"])
        old = records.read_record(record_path)
        created = old.get("created") if old else None
        if log:
            note = getattr(task, "resume_note", None)  # e.g. the window a partial epoch is at
            log(f"resumed from {source} after epoch {start_epoch}" + (f"; {note}" if note else ""))
    if dist.world_size > 1 and torch.distributed.is_initialized() and task.ddp:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    # bf16 autocast applies on CUDA only; the record states the arithmetic actually used.
    precision = cfg.train.precision if device.type == "cuda" else "fp32"
    env = records.environment(device=str(device), workers=dist.world_size, precision=precision,
                              deterministic=cfg.train.deterministic)
    env.update(task.record_facts())
    env.update(extra.get("environment") or {})
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "config.json", cfg_dict)

    def make_record(status: records.Status, failure: dict | None = None) -> dict:
        return records.build_record(
            config=cfg_dict, history=history, status=status, timings=_totals(history), env=env,
            failure=failure, sweep=extra.get("sweep"), axes=extra.get("axes"),
            paper_table=extra.get("paper_table"), created=created,
            certification=extra.get("certification"))

    def save(finished: int) -> None:
        """Write ``checkpoints/last.pt`` (main rank only) after ``finished`` epochs."""
        if dist.is_main:
            save_checkpoint(ckpt_path, config=cfg_dict, model=model, optimizer=task.optimizer,
                            epoch=finished, history=history, task=task.checkpoint_state())

    if hasattr(task, "save_mid_epoch"):
        # A task that checkpoints inside an epoch (language modelling) calls this on every rank
        # with the number of finished epochs; its checkpoint_state() holds the partial epoch.
        task.save_mid_epoch = save
    failure = None
    epoch = start_epoch
    last = cfg.train.epochs if stop_after is None else min(stop_after, cfg.train.epochs)
    try:
        for epoch in range(start_epoch, last):
            t0 = time.perf_counter()
            metrics = task.train_epoch(model, epoch, dist, cfg.train.progress)
            t1 = time.perf_counter()
            # Unwrapped: ranks may hold one eval batch more or less, and DDP's forward
            # would wait on collectives; the sums are all-reduced once at the end instead.
            metrics.update(task.evaluate(_unwrap(model), epoch, dist))
            metrics["eval_s"] = time.perf_counter() - t1
            # A task resumed inside an epoch says how long the epoch ran before (its train_s
            # already counts it), so the epoch's wall time is the whole epoch's too.
            metrics["wall_s"] = time.perf_counter() - t0 + metrics.pop("resumed_s", 0.0)
            history.append(metrics)
            _check_finite(metrics, epoch + 1, task.finite_keys)
            done = epoch + 1
            checkpoint_now = done % cfg.train.checkpoint_every == 0 or done == cfg.train.epochs
            if dist.is_main:
                if checkpoint_now:
                    save(done)
                _write_metrics(out_dir, history, task.csv_columns)
                status = (records.Status.COMPLETED if done == cfg.train.epochs
                          else records.Status.RUNNING)
                records.write_record(record_path, make_record(status))
            if log:
                log(task.summary_line(metrics, cfg.train.epochs))
            if reporter is not None:
                reporter(dict(metrics), ckpt_path.parent if checkpoint_now else None)
    except NonFiniteLoss as exc:
        failure = {"reason": exc.reason, "epoch": exc.epoch, "step": exc.step,
                   "value": str(exc.value)}
        if isinstance(exc, NonFiniteMetric):
            failure["metric"] = exc.metric
        if dist.is_main:
            records.write_record(record_path, make_record(records.Status.FAILED, failure))
        if log:
            log(f"FAILED: {exc}")
    finished = len(history) >= cfg.train.epochs
    record = make_record(records.Status.FAILED if failure else
                         records.Status.COMPLETED if finished else records.Status.RUNNING, failure)
    if dist.is_main and failure is None:
        # Also when no epoch ran: a run killed after its last checkpoint but before its
        # record was written resumes straight to here and must still leave a completed record.
        records.write_record(record_path, record)
    return record


def _totals(history: list[dict]) -> dict:
    wall = sum(h["wall_s"] for h in history)
    train_s = sum(h["train_s"] for h in history)
    sel = sum(h["selection_s"] for h in history)
    images = sum(h.get("images_per_s", 0.0) * h["train_s"] for h in history)
    tokens = sum(h.get("tokens_per_s", 0.0) * h["train_s"] for h in history)
    return {
        "wall_s": wall,
        "train_s": train_s,
        "eval_s": sum(h["eval_s"] for h in history),
        "selection_s": sel,
        "selection_share": sel / train_s if train_s > 0 else 0.0,
        "images_per_s": images / train_s if train_s > 0 else 0.0,
        **({"tokens_per_s": tokens / train_s if train_s > 0 else 0.0} if tokens else {}),
    }


_CSV_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "test_top5",
                "maxup_active", "maxup_m", "maxup_gap", "train_s", "selection_s", "eval_s",
                "wall_s", "images_per_s")


def _write_metrics(out_dir: Path, history: list[dict],
                   columns: tuple[str, ...] = _CSV_COLUMNS) -> None:
    """Rewrite metrics.csv and metrics.jsonl from the history (each epoch exactly once)."""
    import json

    lines = [",".join(columns)]
    for h in history:
        lines.append(",".join("" if h.get(c) is None else str(h.get(c)) for c in columns))
    atomic_write_text(out_dir / "metrics.csv", "\n".join(lines) + "\n")
    atomic_write_text(out_dir / "metrics.jsonl",
                      "".join(json.dumps(records._finite(h)) + "\n" for h in history))


def _summary_line(m: dict, epochs: int) -> str:
    top5 = f" top5 {m['test_top5']:.2f}%" if m.get("test_top5") is not None else ""
    arm = f"maxup m={m['maxup_m']}" if m["maxup_active"] else "standard aug"
    return (f"epoch {m['epoch']:>3}/{epochs}  {arm:<13} lr {m['lr']:.4g}  "
            f"train loss {m['train_loss']:.4f} acc {m['train_acc']:.2f}%  "
            f"test loss {m['test_loss']:.4f} acc {m['test_acc']:.2f}%{top5}  "
            f"{m['wall_s']:.1f}s ({m['images_per_s']:.0f} img/s, "
            f"selection {m['selection_s']:.1f}s)")
