"""Augmentations: fresh non-aliasing copies, exact geometry, noise statistics, mixing, seeds."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch_helpers import clone_gen, gen

from maxup.augment import (
    Compose,
    CropFlip,
    CutMix,
    Cutout,
    GaussianNoise,
    MixUp,
    as_soft_targets,
    build_augmentation,
)
from maxup.config import AugmentConfig

K = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


ALL = {
    "gaussian": lambda: GaussianNoise(0.2, K),
    "cutout": lambda: Cutout(4, K),
    "crop_flip": lambda: CropFlip(2, K),
    "crop_flip_p0": lambda: CropFlip(0, K),
    "compose": lambda: Compose([CropFlip(2, K), Cutout(3, K)]),
    "compose_empty": lambda: Compose([]),
    "cutmix": lambda: CutMix(1.0, K),
    "mixup": lambda: MixUp(1.0, K),
}


def batch(b=K, c=3, h=8, w=8, seed=0):
    x = torch.rand(b, c, h, w, generator=gen(seed))
    y = torch.arange(b) % K
    return x, y


@pytest.mark.parametrize("name", sorted(ALL))
def test_copies_are_fresh_and_never_alias(name):
    aug = ALL[name]()
    x, y = batch()
    x_before = x.clone()
    g = gen(1)
    copies = [aug(x, y, g)[0] for _ in range(3)]
    assert torch.equal(x, x_before)  # input untouched
    ptrs = {x.data_ptr()} | {c.data_ptr() for c in copies}
    assert len(ptrs) == 4
    for c in copies:
        assert c.shape == x.shape and c.dtype == x.dtype
    if name not in ("compose_empty",):
        assert not torch.equal(copies[0], copies[1])  # independent draws differ
    saved = [c.clone() for c in copies]
    copies[0].fill_(-7.0)
    assert torch.equal(copies[1], saved[1]) and torch.equal(copies[2], saved[2])
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("name", sorted(ALL))
def test_same_seed_same_copies(name):
    aug = ALL[name]()
    x, y = batch()
    a = [aug(x, y, g) for g in [gen(5)] for _ in range(2)]
    b = [aug(x, y, g) for g in [gen(5)] for _ in range(2)]
    for (xa, ta), (xb, tb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ta, tb)
        if name != "compose_empty":  # Compose([]) passes y through (it knows no K)
            assert ta.shape == (x.shape[0], K)


def test_mix_does_not_touch_global_rng():
    x, y = batch()
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    CutMix(1.0, K)(x, y, gen(0))
    MixUp(1.0, K)(x, y, gen(0))
    assert torch.equal(torch.rand(3), want)


# --------------------------------------------------------------------------- Cutout


def hand_cutout_mask(h, w, size, cy, cx):
    """1 where the pixel is kept: square rows/cols [c - size//2, c - size//2 + size) zeroed."""
    keep = torch.ones(h, w)
    top, left = cy - size // 2, cx - size // 2
    for r in range(h):
        for c in range(w):
            if top <= r < top + size and left <= c < left + size:
                keep[r, c] = 0.0
    return keep


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 8])
def test_cutout_hole_is_square_of_side_l_clipped_at_border(size):
    b, h, w = 40, 12, 12
    x = torch.ones(b, 2, h, w)
    g = gen(size)
    c = clone_gen(g)
    cy = torch.randint(0, h, (b,), generator=c)  # the centre draws, re-derived
    cx = torch.randint(0, w, (b,), generator=c)
    out, t = Cutout(size, K)(x, torch.zeros(b, dtype=torch.long), g)
    assert torch.equal(t, F.one_hot(torch.zeros(b, dtype=torch.long), K).float())
    far = 0
    for i in range(b):
        keep = hand_cutout_mask(h, w, size, int(cy[i]), int(cx[i]))
        assert torch.equal(out[i], keep.expand(2, h, w)), i
        half = size // 2
        if half <= cy[i] <= h - size + half and half <= cx[i] <= w - size + half:
            far += 1
            assert int((out[i, 0] == 0).sum()) == size * size
        else:
            assert 0 < int((out[i, 0] == 0).sum()) < size * size
    assert far > 0


def test_regression_cutout_odd_size_has_side_l():
    # Cutout used c ± L//2, so an odd side L gave an (L-1)² hole and L = 1 no hole at all.
    x = torch.ones(20, 1, 32, 32)
    for size in (1, 3, 7):
        out, _ = Cutout(size, K)(x, torch.zeros(20, dtype=torch.long), gen(0))
        zeros = (out == 0).sum(dim=(1, 2, 3))
        assert int(zeros.max()) == size * size
        assert bool((zeros >= 1).all())


# --------------------------------------------------------------------------- CropFlip


def padded_crops(x_i, p):
    """All (dy, dx, flip) crops of the zero-padded image, by hand."""
    c, h, w = x_i.shape
    padded = torch.zeros(c, h + 2 * p, w + 2 * p)
    padded[:, p:p + h, p:p + w] = x_i
    for dy, dx, flip in itertools.product(range(2 * p + 1), range(2 * p + 1), (False, True)):
        crop = padded[:, dy:dy + h, dx:dx + w]
        yield (dy, dx, flip), (crop.flip(-1) if flip else crop)


def test_crop_flip_is_a_zero_padded_shift_at_the_drawn_offset():
    b, p = 24, 3
    x = torch.rand(b, 3, 10, 9, generator=gen(0)) + 0.5  # no zeros in the source
    g = gen(4)
    c = clone_gen(g)
    oy = torch.randint(0, 2 * p + 1, (b,), generator=c)
    ox = torch.randint(0, 2 * p + 1, (b,), generator=c)
    flip = torch.rand(b, generator=c) < 0.5
    out, _ = CropFlip(p, K)(x, torch.zeros(b, dtype=torch.long), g)
    assert out.shape == x.shape
    seen_flip = set()
    for i in range(b):
        matches = [k for k, crop in padded_crops(x[i], p) if torch.equal(crop, out[i])]
        # draw-order-free check: the output is exactly one padded crop, and it is the drawn one
        assert (int(oy[i]), int(ox[i]), bool(flip[i])) in matches
        seen_flip.add(bool(flip[i]))
        # padding is zeros: the zero rows/cols are exactly the ones outside the source
        zero_rows = (out[i] == 0).all(dim=(0, 2)).sum()
        assert int(zero_rows) == abs(int(oy[i]) - p)
    assert seen_flip == {False, True}


def test_crop_flip_padding_zero_only_flips():
    x, y = batch()
    out, _ = CropFlip(0, K)(x, y, gen(1))
    for i in range(x.shape[0]):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))


# --------------------------------------------------------------------------- Gaussian


def test_gaussian_noise_has_requested_std_and_zero_mean():
    sigma = 0.3
    x = torch.rand(64, 3, 32, 32, generator=gen(0))
    out, t = GaussianNoise(sigma, K)(x, torch.zeros(64, dtype=torch.long), gen(1))
    noise = (out - x).flatten().double()
    n = noise.numel()
    assert abs(float(noise.mean())) < 4 * sigma / math.sqrt(n)
    # SE of the sample std of a normal ≈ σ / sqrt(2n); allow 5 SE
    assert abs(float(noise.std()) - sigma) < 5 * sigma / math.sqrt(2 * n)
    assert float(out.max()) > 1.0 and float(out.min()) < 0.0  # unclipped
    assert torch.equal(t.sum(1), torch.ones(64))


# --------------------------------------------------------------------------- CutMix / MixUp


def test_cutmix_pixels_from_exactly_two_images_and_targets_match_area():
    b = K
    x = torch.rand(b, 3, 16, 16, generator=gen(0))  # distinct images, distinct classes
    y = torch.arange(b)
    for seed in range(6):
        out, t = CutMix(1.0, K)(x, y, gen(seed))
        assert torch.allclose(t.sum(1), torch.ones(b))
        for j in range(b):
            from_j = (out[j] == x[j]).all(0)  # (H, W) pixel positions taken from x[j]
            others = [a for a in range(b) if a != j and bool(((out[j] == x[a]).all(0)
                                                              & ~from_j).any())]
            assert len(others) <= 1
            srcs = [j] + others
            covered = torch.zeros(16, 16, dtype=torch.bool)
            for a in srcs:
                covered |= (out[j] == x[a]).all(0)
            assert bool(covered.all())  # every pixel comes from one of the (at most) two
            lam = float(from_j.float().mean())
            assert math.isclose(float(t[j, j]), lam, abs_tol=1e-6)
            if others:
                assert math.isclose(float(t[j, others[0]]), 1 - lam, abs_tol=1e-6)
            assert int((t[j] > 0).sum()) == len(srcs) if lam < 1 else True


def test_mixup_is_convex_combination_of_two_images_with_matching_target():
    b = K
    x = torch.rand(b, 3, 8, 8, generator=gen(0))  # generic images: linearly independent
    y = torch.arange(b)  # distinct classes, so t[j, a] is the weight of image a
    for seed in range(4):
        out, t = MixUp(1.0, K)(x, y, gen(seed))
        assert torch.allclose(t.sum(1), torch.ones(b))
        basis = x.flatten(1).T.double()  # (D, B)
        for j in range(b):
            coef = torch.linalg.lstsq(basis, out[j].flatten().double()).solution  # (B,)
            assert torch.allclose(basis @ coef, out[j].flatten().double(), atol=1e-5)
            support = (coef.abs() > 1e-4).nonzero().flatten().tolist()
            assert j in support and len(support) == 2  # own image + one partner
            assert torch.allclose(coef.float(), t[j], atol=1e-4)  # pixel weights == target


def test_mix_draws_a_fresh_pairing_and_ratio_per_call():
    x, y = batch()
    g = gen(0)
    t1 = MixUp(1.0, K)(x, y, g)[1]
    t2 = MixUp(1.0, K)(x, y, g)[1]
    assert not torch.equal(t1, t2)


def test_soft_target_input_passes_through():
    x, _ = batch()
    soft = torch.softmax(torch.randn(K, K, generator=gen(0)), 1)
    _, t = Cutout(2, K)(x, soft, gen(0))
    assert torch.allclose(t, soft)
    _, t = CutMix(1.0, K)(x, soft, gen(0))
    assert torch.allclose(t.sum(1), torch.ones(K))
    assert torch.equal(as_soft_targets(torch.tensor([2]), 4), torch.tensor([[0., 0, 1, 0]]))


# --------------------------------------------------------------------------- Compose


def test_compose_applies_crop_flip_then_cutout():
    x, y = batch(h=12, w=12)
    g = gen(9)
    c = clone_gen(g)
    got, t = Compose([CropFlip(2, K), Cutout(4, K)])(x, y, g)
    x1, t1 = CropFlip(2, K)(x, y, c)
    cy = torch.randint(0, 12, (x.shape[0],), generator=c)
    cx = torch.randint(0, 12, (x.shape[0],), generator=c)
    for i in range(x.shape[0]):
        keep = hand_cutout_mask(12, 12, 4, int(cy[i]), int(cx[i]))
        assert torch.equal(got[i], x1[i] * keep)
    assert torch.equal(t, t1)
    other = Compose([Cutout(4, K), CropFlip(2, K)])(x, y, gen(9))[0]
    assert not torch.equal(other, got)


def test_build_augmentation_follows_ops_order():
    aug = build_augmentation(AugmentConfig(ops=["crop_flip", "cutout"], cutout_size=5,
                                           crop_padding=3), K)
    assert isinstance(aug, Compose)
    assert [type(a) for a in aug.augmentations] == [CropFlip, Cutout]
    assert aug.augmentations[0].padding == 3 and aug.augmentations[1].size == 5
    single = build_augmentation(AugmentConfig(ops=["gaussian"], sigma=0.7), K)
    assert isinstance(single, GaussianNoise) and single.sigma == 0.7
