"""Image classification with the MaxUp objective: data, model, optimiser and objective built
from a config (:class:`Run`), one training epoch, the clean evaluation, and the task the loop
drives (:class:`ImageTask`)."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from maxup.augment import build_augmentation
from maxup.config import RunConfig
from maxup.engine.batches import Batches, device_resident, eval_batches
from maxup.engine.dist import DistContext, all_reduce_sum
from maxup.engine.nonfinite import NonFiniteLoss
from maxup.engine.progress import Progress
from maxup.engine.rng import derive_seed, seed_everything
from maxup.objective import MaxUpLoss
from maxup.schedule import copies_at, learning_rate

#: Steps between two checks of the loss for NaN/inf (each check is the epoch's only wait for
#: the device besides its end); a non-finite loss still fails the run at its exact step.
FINITE_CHECK_EVERY = 64

#: The columns of an image run's ``metrics.csv``.
CSV_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "test_top5",
               "maxup_active", "maxup_m", "maxup_gap", "train_s", "selection_s", "eval_s",
               "wall_s", "images_per_s")


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
    # On a GPU, data that fits is moved there once: batches are then gathered on the device.
    train_set, test_set = device_resident(train_set, device), device_resident(test_set, device)
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
    per_batch = []  # (loss sum, top-1 hits, top-5 hits, count) per batch, on the device
    ctx = autocast or contextlib.nullcontext
    k = min(5, num_classes)
    with torch.inference_mode():
        for x, y in eval_batches(dataset, batch_size, dist.rank, dist.world_size):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with ctx():
                logits = model(x)
            logits = logits.float()
            hit = logits.topk(k, dim=1).indices == y[:, None]
            per_batch.append(torch.stack([
                F.cross_entropy(logits, y, reduction="sum").double(),
                hit[:, 0].sum().double(), hit.any(dim=1).sum().double(),
                torch.tensor(float(len(y)), dtype=torch.float64, device=y.device)]))
    # One transfer at the end; summed on the host batch by batch (the order, and so the
    # float64 result, of a per-batch .item()).
    sums = torch.zeros(4, dtype=torch.float64)
    for row in (torch.stack(per_batch).tolist() if per_batch else []):
        sums += torch.tensor(row, dtype=torch.float64)
    if dist.world_size > 1 and torch.distributed.is_initialized():
        sums = all_reduce_sum(sums, device)
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
    m = copies_at(epoch, m=cfg.maxup.m, warmup_epochs=cfg.maxup.warmup_epochs)
    maxup_active = m > 1
    local_batch = cfg.train.batch_size // dist.world_size
    batches = Batches(run.train_set, local_batch, seed=derive_seed(cfg.seed, epoch, "order"),
                       rank=dist.rank, world=dist.world_size, num_workers=cfg.data.num_workers)
    bar = Progress(progress and dist.is_main, len(batches), epoch + 1, cfg.train.epochs)
    model.train()
    device = run.device
    distributed = dist.world_size > 1 and torch.distributed.is_initialized()
    # Per-step values stay on the device and come back FINITE_CHECK_EVERY steps at a time:
    # no host synchronisation inside the step. The sums are then taken on the host in step
    # order, so the metrics are the same numbers a per-step float() would give.
    pending: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # (loss, gap, batch) per step
    done = seen = 0  # steps and examples brought to the host so far
    loss_sum = gap_sum = 0.0
    correct = torch.zeros((), dtype=torch.long, device=device)
    wins = torch.zeros(m, dtype=torch.long, device=device)
    selection_s = 0.0

    def drain() -> None:
        """Bring the pending steps' values to the host and add them to the sums in step
        order; raise on a non-finite loss there."""
        nonlocal done, seen, loss_sum, gap_sum
        if not pending:
            return
        losses = torch.stack([loss for loss, _, _ in pending]).double()
        gaps = torch.stack([gap for _, gap, _ in pending]).double().tolist()
        sizes = [b for _, _, b in pending]
        pending.clear()
        mine = losses.tolist()
        # All ranks stop at the same step: one stopping alone would leave the others
        # waiting in DDP's gradient all-reduce until the collective timeout.
        totals = all_reduce_sum(losses, device).tolist() if distributed else mine
        for i, (value, total) in enumerate(zip(mine, totals, strict=True)):
            if not math.isfinite(total):
                raise NonFiniteLoss(epoch + 1, done + i,
                                    value if not math.isfinite(value) else total)
        for value, gap, b in zip(mine, gaps, sizes, strict=True):
            loss_sum += value * b
            gap_sum += gap * b
        done, seen = done + len(sizes), seen + sum(sizes)

    t0 = time.perf_counter()
    for step, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = run.objective(model, x, y, gen, m=m)
        run.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        run.optimizer.step()
        pending.append((out.loss.detach().float(), out.gap.float(), x.shape[0]))
        correct += (out.logits.argmax(1) == out.targets.argmax(1)).sum()
        wins += out.wins
        selection_s += out.selection_s
        if len(pending) == FINITE_CHECK_EVERY or bar.enabled:
            drain()  # a watching terminal sees the running loss every step
            bar.update(step + 1, loss_sum / max(seen, 1))
    drain()
    bar.close()
    train_s = time.perf_counter() - t0
    seen, correct, wins = float(seen), float(correct), wins.cpu()
    if distributed:
        # Training metrics over the whole global batch, not rank 0's shard.
        sums = torch.tensor([loss_sum, correct, seen, gap_sum], dtype=torch.float64)
        loss_sum, correct, seen, gap_sum = all_reduce_sum(sums, device).tolist()
        wins = all_reduce_sum(wins, device)
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


class ImageTask:
    """Image classification with the MaxUp objective: :func:`train_epoch` and
    :func:`evaluate` on a :class:`Run`; checkpoints hold model and optimiser only."""

    ddp = True
    compilable = True  # train.compile applies (maxup.engine.compiling)
    finite_keys = ("test_loss", "test_acc", "test_top5")

    def __init__(self, run: Run):
        self.run, self.model, self.optimizer = run, run.model, run.optimizer
        self.csv_columns = CSV_COLUMNS

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
        return summary_line(metrics, epochs)


def summary_line(m: dict, epochs: int) -> str:
    top5 = f" top5 {m['test_top5']:.2f}%" if m.get("test_top5") is not None else ""
    arm = f"maxup m={m['maxup_m']}" if m["maxup_active"] else "standard aug"
    return (f"epoch {m['epoch']:>3}/{epochs}  {arm:<13} lr {m['lr']:.4g}  "
            f"train loss {m['train_loss']:.4f} acc {m['train_acc']:.2f}%  "
            f"test loss {m['test_loss']:.4f} acc {m['test_acc']:.2f}%{top5}  "
            f"{m['wall_s']:.1f}s ({m['images_per_s']:.0f} img/s, "
            f"selection {m['selection_s']:.1f}s)")
