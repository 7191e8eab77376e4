"""Random augmentations in the one protocol the MaxUp objective draws copies from.

An augmentation is a callable ``aug(x, y, generator) -> (x_aug, targets)``:

- ``x``: float tensor (B, C, H, W), pixel space in [0, 1] (models normalise inside);
- ``y``: int64 class indices (B,) or soft targets (B, K);
- ``generator``: a ``torch.Generator`` on ``x``'s device; every call draws fresh randomness
  from it, so a run is reproducible from its seed;
- returns a NEW tensor ``x_aug`` (B, C, H, W) that never aliases ``x`` (ops that write in
  place clone first) and soft targets (B, K) (one-hot for label-preserving ops; mixed for
  CutMix/MixUp, one mixing per call, so each MaxUp copy gets its own mixed target).

CutMix and MixUp are torchvision.transforms.v2's own implementations; we only give them a
random pairing per call and a seed from ``generator`` (they draw from the global RNG).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Augmentation = Callable[
    [torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]
]


def as_soft_targets(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices (B,) → one-hot float (B, K); soft targets (B, K) pass through as float."""
    if y.ndim == 1:
        return F.one_hot(y.long(), num_classes).float()
    return y.float()


class GaussianNoise:
    """Add isotropic Gaussian noise ``sigma * N(0, I)`` in pixel space (unclipped, as Cohen et al.).

    Args:
        sigma: noise standard deviation in pixel units of [0, 1] images.
        num_classes: number of classes K of the soft targets.
    """

    def __init__(self, sigma: float, num_classes: int):
        self.sigma, self.num_classes = float(sigma), num_classes

    def __call__(self, x, y, generator):
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + self.sigma * noise, as_soft_targets(y, self.num_classes)


class Cutout:
    """Zero one square hole of side ``size`` per image (DeVries & Taylor 2017).

    The centre is uniform over the image, and the square is clipped at the border, so holes
    near an edge are smaller — exactly the reference implementation's behaviour.

    Args:
        size: side L of the square in pixels (16 on CIFAR-10, 8 on CIFAR-100).
        num_classes: number of classes K of the soft targets.
    """

    def __init__(self, size: int, num_classes: int):
        self.size, self.num_classes = int(size), num_classes

    def __call__(self, x, y, generator):
        b, _, h, w = x.shape
        cy = torch.randint(0, h, (b,), generator=generator, device=x.device)
        cx = torch.randint(0, w, (b,), generator=generator, device=x.device)
        half = self.size // 2
        # [c - L//2, c - L//2 + L): side L for odd L too (c ± L//2 gave L - 1, none for L=1)
        y1, y2 = (cy - half).clamp(0, h), (cy - half + self.size).clamp(0, h)
        x1, x2 = (cx - half).clamp(0, w), (cx - half + self.size).clamp(0, w)
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        in_rows = (rows >= y1[:, None]) & (rows < y2[:, None])  # (B, H)
        in_cols = (cols >= x1[:, None]) & (cols < x2[:, None])  # (B, W)
        hole = in_rows[:, :, None] & in_cols[:, None, :]  # (B, H, W)
        return x.masked_fill(hole[:, None], 0.0), as_soft_targets(y, self.num_classes)


class CropFlip:
    """The standard pipeline: zero-pad by ``padding``, random crop back to (H, W), random h-flip.

    Args:
        padding: pixels of zero padding on each side (4 on CIFAR).
        num_classes: number of classes K of the soft targets.
    """

    def __init__(self, padding: int, num_classes: int):
        self.padding, self.num_classes = int(padding), num_classes

    def __call__(self, x, y, generator):
        b, c, h, w = x.shape
        p = self.padding
        dev = x.device
        out = x
        if p > 0:
            padded = F.pad(x, (p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=dev)
            ox = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=dev)
            rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (B,1,H,1)
            cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (B,1,1,W)
            bi = torch.arange(b, device=dev)[:, None, None, None]
            ci = torch.arange(c, device=dev)[None, :, None, None]
            out = padded[bi, ci, rows, cols]
        flip = torch.rand(b, generator=generator, device=dev) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
        return out, as_soft_targets(y, self.num_classes)


class _TorchvisionMix:
    """Run a torchvision v2 batch-mixing transform with a random pairing and a seeded RNG."""

    def __init__(self, transform, num_classes: int):
        self.transform, self.num_classes = transform, num_classes

    def __call__(self, x, y, generator):
        b = x.shape[0]
        targets = as_soft_targets(y, self.num_classes)
        # torchvision pairs each image with its neighbour (roll by one); a fresh permutation
        # per call gives every MaxUp copy its own partner, and the seed drawn from our
        # generator makes its Beta/box draws reproducible without touching the global RNG.
        perm = torch.randperm(b, generator=generator, device=x.device)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=x.device))
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only (torchvision draws there): torch.manual_seed would also
            # reseed every CUDA device's generator, which fork_rng(devices=[]) does not restore.
            torch.default_generator.manual_seed(seed)
            mixed, mixed_t = self.transform(x[perm], targets[perm])
        inverse = torch.argsort(perm)
        return mixed[inverse], mixed_t[inverse]


class CutMix(_TorchvisionMix):
    """CutMix (Yun et al. 2019) from ``torchvision.transforms.v2.CutMix``.

    Args:
        alpha: Beta(alpha, alpha) parameter of the mixing ratio.
        num_classes: number of classes K of the soft targets.
    """

    def __init__(self, alpha: float, num_classes: int):
        from torchvision.transforms import v2

        super().__init__(v2.CutMix(alpha=alpha, num_classes=num_classes), num_classes)


class MixUp(_TorchvisionMix):
    """MixUp (Zhang et al. 2018) from ``torchvision.transforms.v2.MixUp``.

    Args:
        alpha: Beta(alpha, alpha) parameter of the mixing ratio.
        num_classes: number of classes K of the soft targets.
    """

    def __init__(self, alpha: float, num_classes: int):
        from torchvision.transforms import v2

        super().__init__(v2.MixUp(alpha=alpha, num_classes=num_classes), num_classes)


class Compose:
    """Apply augmentations in order (e.g. crop+flip, then Cutout), threading the targets."""

    def __init__(self, augmentations: Sequence[Augmentation]):
        self.augmentations = list(augmentations)

    def __call__(self, x, y, generator):
        for aug in self.augmentations:
            x, y = aug(x, y, generator)
        if not self.augmentations:
            x = x.clone()
        return x, y


def build_augmentation(cfg, num_classes: int) -> Augmentation:
    """Build the per-copy augmentation named by an ``AugmentConfig``.

    Args:
        cfg: ``maxup.config.AugmentConfig`` (ops in order, plus their parameters).
        num_classes: number of classes K of the soft targets.
    """
    factories = {
        "crop_flip": lambda: CropFlip(cfg.crop_padding, num_classes),
        "cutout": lambda: Cutout(cfg.cutout_size, num_classes),
        "gaussian": lambda: GaussianNoise(cfg.sigma, num_classes),
        "cutmix": lambda: CutMix(cfg.cutmix_alpha, num_classes),
        "mixup": lambda: MixUp(cfg.mixup_alpha, num_classes),
    }
    ops = [factories[name]() for name in cfg.ops]
    return ops[0] if len(ops) == 1 else Compose(ops)
