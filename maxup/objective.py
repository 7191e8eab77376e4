"""The MaxUp objective (Gong et al. 2020, Equations 2–3, Algorithm 1).

For a batch (x, y) of B examples, draw m augmented copies of every example, take for each
example the copy with the largest loss, and minimise the mean of those worst-copy losses:

    L(θ) = (1/B) Σ_i max_{k<m} ℓ(f_θ(x′_{k,i}), t′_{k,i}).

The gradient of a max is the gradient of its argmax (Equation 3), so only each example's worst
copy is back-propagated.

Layout: the m·B copies are stacked copies × batch — row ``k * B + i`` is copy k of example i —
and per-copy losses are viewed as (m, B).

Modes:
    efficient (default): the m·B selection forwards run under ``torch.no_grad()`` (in chunks
        of ``chunk`` copies), then only the B selected copies are forwarded again with grad.
        Cost ≈ m no-grad forwards + one ordinary training step; memory ≈ one training step.
    naive: one forward of all m·B copies with grad, max, backward; the reference.

BatchNorm in the selection pass never changes running statistics:
    ``batch_stats`` (default) keeps BN in training mode — normalising with the selection
    batch's statistics like the trained forward does — but with ``track_running_stats`` off
    for the pass, so running_mean/var and num_batches_tracked stay as they were. This selects
    the copy that is worst for the function actually being trained; ``eval`` would judge copies
    with running statistics that lag behind early in training.
    ``eval`` puts BN (and dropout) in eval mode for the pass.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from maxup.augment import Augmentation


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy with soft targets.

    Args:
        logits: (N, K) raw scores.
        targets: (N, K) probabilities (one-hot for hard labels).

    Returns:
        (N,) losses in nats; equals ``F.cross_entropy`` for one-hot targets.
    """
    logits = logits if logits.dtype == torch.float64 else logits.float()  # upcast, never down
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1)


@dataclass
class MaxUpOutput:
    """What one MaxUp step computed.

    Attributes:
        loss: scalar, mean over examples of the worst-copy loss (differentiable).
        logits: (B, K) logits of the selected copies (detached).
        targets: (B, K) soft targets of the selected copies.
        worst: (B,) int64 index k < m of each example's selected copy.
        gap: 0-dim tensor (the loss's dtype, on the batch's device): mean over examples of
            (worst-copy loss − mean copy loss), nats; 0 when m = 1. A tensor, not a float, so
            that a step needs no host synchronisation (``float(out.gap)`` waits for the device).
        wins: (m,) int64 on the batch's device, how often each copy index was the worst.
        selection_s: host seconds spent in the no-grad selection pass (on a GPU, with no
            synchronisation inside the step, the time to issue it, not to run it).
    """

    loss: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    worst: torch.Tensor
    gap: torch.Tensor
    wins: torch.Tensor
    selection_s: float


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module):
    """Context in which BatchNorm layers use batch statistics but never update running ones."""
    saved = []
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
            saved.append(mod)
            mod.track_running_stats = False
    try:
        yield
    finally:
        for mod in saved:
            mod.track_running_stats = True


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Context in which ``model`` is in eval mode; its previous modes are restored after."""
    modes = [(mod, mod.training) for mod in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for mod, training in modes:
            mod.training = training


class MaxUpLoss:
    """The MaxUp objective over any augmentation.

    Args:
        augmentation: callable ``(x, y, generator) -> (x_aug, soft_targets)``, see maxup.augment.
        m: number of augmented copies per example (m = 1 is standard augmentation training).
        num_classes: K, for turning class indices into one-hot targets.
        mode: ``"efficient"`` (no-grad selection, then one grad forward) or ``"naive"``.
        bn: ``"batch_stats"`` or ``"eval"``: BatchNorm behaviour in the selection pass.
        chunk: copies per selection forward (None: all m in one pass of m·B images). The
            default 2 bounds the selection pass's memory at two batches' worth of one layer's
            activations whatever m is (all m at once measured 2.1× an ERM step's peak at
            m = 10; chunks of 2 stay within ERM's — BENCHMARKS.md).
        autocast: optional context-manager factory wrapping forwards (bf16 on GPU).

    Example::

        objective = MaxUpLoss(Cutout(16, 10), m=4, num_classes=10)
        out = objective(model, x, y, generator)   # x (B, 3, 32, 32) in [0, 1], y (B,)
        out.loss.backward(); optimizer.step()
    """

    def __init__(self, augmentation: Augmentation, m: int, num_classes: int, *,
                 mode: str = "efficient", bn: str = "batch_stats", chunk: int | None = 2,
                 autocast=None):
        if m < 1:
            raise ValueError(f"m must be >= 1, got {m}")
        if mode not in ("efficient", "naive"):
            raise ValueError(f"mode must be 'efficient' or 'naive', got {mode!r}")
        if bn not in ("batch_stats", "eval"):
            raise ValueError(f"bn must be 'batch_stats' or 'eval', got {bn!r}")
        self.augmentation, self.m, self.num_classes = augmentation, m, num_classes
        self.mode, self.bn, self.chunk = mode, bn, chunk
        self.autocast = autocast or contextlib.nullcontext

    def draw_copies(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                    m: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw m augmented copies: returns (m·B, C, H, W) images and (m·B, K) targets.

        Each copy is an independent call of the augmentation on the whole batch, so
        batch-mixing augmentations (CutMix, MixUp) draw their own partners and ratios per copy.
        """
        m = self.m if m is None else m
        xs, ts = zip(*(self.augmentation(x, y, generator) for _ in range(m)), strict=True)
        return torch.cat(xs), torch.cat(ts)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator, m: int | None = None) -> MaxUpOutput:
        """One MaxUp loss evaluation (the caller runs backward and the optimiser step).

        Args:
            model: the network, in training mode.
            x: (B, C, H, W) clean images in [0, 1].
            y: (B,) class indices or (B, K) soft targets.
            generator: torch.Generator on x's device for the augmentation's randomness.
            m: copies for this call (overrides the constructor's m, e.g. 1 during warm-up).
        """
        m = self.m if m is None else m
        b = x.shape[0]
        if m == 1:
            xa, ta = self.augmentation(x, y, generator)
            with self.autocast():
                logits = model(xa)
            loss = soft_cross_entropy(logits, ta)
            zeros = torch.zeros(b, dtype=torch.long, device=x.device)
            return MaxUpOutput(loss.mean(), logits.detach(), ta, zeros,
                               loss.detach().new_zeros(()),
                               torch.full((1,), b, dtype=torch.long, device=x.device), 0.0)
        xs, ts = self.draw_copies(x, y, generator, m)
        if self.mode == "naive":
            with self.autocast():
                logits_all = model(xs)
            losses = soft_cross_entropy(logits_all, ts).view(m, b)
            worst_loss, worst = losses.max(dim=0)
            rows = worst * b + torch.arange(b, device=x.device)
            return MaxUpOutput(worst_loss.mean(), logits_all.detach()[rows], ts[rows], worst,
                               (worst_loss - losses.mean(0)).mean().detach(),
                               torch.bincount(worst, minlength=m), 0.0)

        t0 = time.perf_counter()
        losses = self.selection_losses(model, xs, ts, m).view(m, b)
        worst = losses.argmax(dim=0)
        gap = (losses.max(dim=0).values - losses.mean(0)).mean()
        selection_s = time.perf_counter() - t0
        rows = worst * b + torch.arange(b, device=x.device)
        x_sel, t_sel = xs[rows], ts[rows]
        with self.autocast():
            logits = model(x_sel)
        loss = soft_cross_entropy(logits, t_sel)
        return MaxUpOutput(loss.mean(), logits.detach(), t_sel, worst, gap,
                           torch.bincount(worst, minlength=m), selection_s)

    @torch.no_grad()
    def selection_losses(self, model: nn.Module, xs: torch.Tensor, ts: torch.Tensor,
                         m: int) -> torch.Tensor:
        """Per-copy losses (m·B,) without autograd and without touching BN running statistics.

        Args:
            xs: (m·B, C, H, W) copies, copies × batch.
            ts: (m·B, K) their soft targets.
            m: number of copies stacked in ``xs``.
        """
        # A DDP wrapper is bypassed: selection is local to each worker, with no collectives.
        model = getattr(model, "module", model)
        ctx = eval_mode(model) if self.bn == "eval" else frozen_batchnorm_stats(model)
        size = xs.shape[0] if self.chunk is None else (xs.shape[0] // m) * self.chunk
        out = []
        with ctx:
            for start in range(0, xs.shape[0], size):
                with self.autocast():
                    logits = model(xs[start:start + size])
                out.append(soft_cross_entropy(logits, ts[start:start + size]))
        return torch.cat(out)
