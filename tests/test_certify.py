"""Randomized-smoothing certification: known answers, exact-model behaviour, sharding, CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from maxup import certify as C
from maxup.errors import DataError, UsageError

# ----------------------------------------------------------------------------- tiny models


class PixelNormalize(nn.Module):
    """(x - mean) / std, the first layer of every model in this project."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Constant(nn.Module):
    """Always predicts ``cls`` out of ``k`` classes; input (B, ...) -> (B, k)."""

    def __init__(self, cls: int = 3, k: int = 10):
        super().__init__()
        self.cls, self.k = cls, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.k, dtype=x.dtype, device=x.device)
        out[:, self.cls] = 1.0
        return out


class Linear2(nn.Module):
    """Two-class linear classifier with a pixel-space decision boundary {z : w.z = b}.

    Normalises inside (std 0.5), so if noise were wrongly added after normalisation the
    effective sigma would double and the certified radii would be off by a factor of 2.
    Class 1 where w.z > b, class 0 otherwise; ``w`` is a unit vector over the D pixels.
    """

    def __init__(self, dim: int, b: float, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(dim, generator=g, dtype=torch.float64)
        self.register_buffer("w", w / w.norm())
        self.b = b
        self.norm = PixelNormalize(0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the score is computed on the normalised input u = (x - 0.5) / 0.5 = 2x - 1:
        # w.x - b > 0  <=>  w.u - (2b - sum(w)) > 0, so the boundary is {w.x = b} in pixels
        u = self.norm(x).flatten(1).to(self.w.dtype)
        s = u @ self.w - (2 * self.b - self.w.sum())
        return torch.stack([-s, s], dim=1)


def point_at_distance(model: Linear2, d: float, shape=(1, 1, 8)) -> torch.Tensor:
    """Image (C, H, W) on the class-0 side at l2 distance ``d`` from the boundary."""
    base = torch.full(shape, 0.5, dtype=torch.float64).flatten()
    # move base onto the boundary, then d along -w
    s = base @ model.w - model.b
    x = base - s * model.w - d * model.w
    return x.reshape(shape)


# ----------------------------------------------------------------------------- known answers


@pytest.mark.parametrize(
    "n_a, n, sigma, p_lower, r",
    [
        (100_000, 100_000, 0.25, 0.99993092, 0.952864),
        (99_000, 100_000, 0.25, 0.98898934, 0.572500),
        (90, 100, 0.5, 0.77532988, 0.378258),
    ],
)
def test_bound_and_radius_known_answers(n_a, n, sigma, p_lower, r):
    p = C.lower_confidence_bound(n_a, n, 0.001)
    assert p == pytest.approx(p_lower, abs=5e-9)
    assert C.radius(p, sigma) == pytest.approx(r, abs=5e-7)


def test_bound_edge_cases():
    assert C.lower_confidence_bound(0, 100, 0.001) == 0.0
    # n_a == n: the CP lower bound solves p**n = alpha
    assert C.lower_confidence_bound(50, 50, 0.01) == pytest.approx(0.01 ** (1 / 50), rel=1e-12)
    # monotone in n_a
    ps = [C.lower_confidence_bound(k, 200, 0.001) for k in range(0, 201, 20)]
    assert ps == sorted(ps)
    with pytest.raises(ValueError):
        C.lower_confidence_bound(101, 100, 0.001)
    with pytest.raises(ValueError):
        C.lower_confidence_bound(1, 100, 1.0)


def test_predict_pvalue_known_answer():
    assert C.predict_pvalue(60, 40) == pytest.approx(0.05689, abs=5e-6)
    assert C.predict_pvalue(60, 40) > 0.001  # -> PREDICT abstains at alpha = 0.001
    assert C.predict_pvalue(0, 0) == 1.0
    assert C.predict_pvalue(100, 0) == pytest.approx(2 * 0.5**100)


def test_default_radii():
    assert C.DEFAULT_RADII == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75]


# ----------------------------------------------------------------------------- sampling


class TrainModeTrap(Constant):
    def forward(self, x):
        assert not self.training, "sampling must run in eval mode"
        assert torch.is_inference_mode_enabled()
        return super().forward(x)


def test_sample_noise_counts_shape_sum_and_mode():
    model = TrainModeTrap(cls=2, k=5).train()
    x = torch.rand(3, 4, 4)
    counts = C.sample_noise_counts(model, x, 1001, 0.25, 5, batch=100,
                                   generator=torch.Generator().manual_seed(0))
    assert counts.shape == (5,) and counts.dtype == torch.long
    assert counts.tolist() == [0, 0, 1001, 0, 0]
    assert model.training  # previous mode restored


def test_sample_noise_counts_same_seed_same_counts():
    model = Linear2(dim=8, b=0.0)
    x = point_at_distance(model, 0.1)
    a = C.sample_noise_counts(model, x, 3000, 0.5, 2, 400, torch.Generator().manual_seed(7))
    b = C.sample_noise_counts(model, x, 3000, 0.5, 2, 400, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and int(a.sum()) == 3000


def test_sample_noise_counts_rejects_too_many_classes():
    with pytest.raises(ValueError, match="num_classes"):
        C.sample_noise_counts(Constant(cls=7, k=10), torch.rand(1, 2, 2), 10, 0.1, 5)


# ----------------------------------------------------------------------------- CERTIFY


def test_constant_classifier_radius():
    n, alpha, sigma = 2_000, 0.001, 0.5
    pred, r = C.certify(Constant(cls=3), torch.rand(3, 8, 8), sigma=sigma, n0=10, n=n,
                        alpha=alpha, batch=500, num_classes=10,
                        generator=torch.Generator().manual_seed(0))
    # independent expectation: n_A = n, so the one-sided CP bound solves p**n = alpha
    expected = sigma * norm.ppf(alpha ** (1.0 / n))
    assert pred == 3
    assert r == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("d", [0.1, 0.25, 0.5])
def test_linear_classifier_radius_sound_and_tight(d):
    """Exact smoothed radius of a linear classifier is d; the certificate is <= d and close.

    For a half-space, P(class 0 | x + sigma*eps) = Phi(d / sigma), so sigma*Phi^-1(p_A) = d.
    With n = 20,000, sigma = 0.5: p_A = Phi(d/sigma) in {0.58, 0.69, 0.84}; the CP bound lies about
    z_{1-alpha} * sd(p_hat) = 3.09 * sqrt(p(1-p)/n) <= 0.0101 below p_hat, and dr/dp =
    sigma / phi(Phi^-1(p)) <= 2.07, so the expected shortfall is <= 0.021 with sampling sd
    <= 0.0069. A tolerance of 0.06 is > 5 sd beyond the expected shortfall.
    """
    sigma, n = 0.5, 20_000
    model = Linear2(dim=8, b=0.1)
    x = point_at_distance(model, d)
    assert int(model(x.unsqueeze(0)).argmax()) == 0
    pred, r = C.certify(model, x, sigma=sigma, n0=100, n=n, alpha=0.001, batch=2000,
                        num_classes=2, generator=torch.Generator().manual_seed(1))
    assert pred == 0
    assert r <= d
    assert r >= d - 0.06


def _exact_violation_probability(p: float, n0: int, n: int, alpha: float) -> float:
    """P(a wrong certificate) for a classifier whose top class has probability ``p`` under
    noise, computed from binomial sums alone (no code under test).

    CERTIFY returns class 0 with a radius beyond the true one iff the one-sided
    Clopper-Pearson bound of its count exceeds ``p``, i.e. iff ``P_p(X >= k) < alpha`` for
    ``X ~ Bin(n, p)``; it returns class 1 (always wrong) iff the n0 selection draws favour
    class 1 strictly (argmax ties go to class 0) and the bound of class 1's count reaches 0.5.
    """
    from scipy.stats import binom

    k = np.arange(n + 1)
    wrong_radius = float((binom.pmf(k, n, p) * (binom.sf(k - 1, n, p) < alpha)).sum())
    select_1 = float(binom.sf(n0 // 2, n0, 1 - p))
    wrong_class = float((binom.pmf(k, n, 1 - p) * (binom.sf(k - 1, n, 0.5) <= alpha)).sum())
    return (1 - select_1) * wrong_radius + select_1 * wrong_class


def test_certificate_failure_rate_matches_its_exact_value_and_is_at_most_alpha():
    """The guarantee itself, tightly: over 2,000 independent runs the number of wrong
    certificates (radius beyond the true one, or the wrong class) is Binomial(2000, q) with q
    the exact probability of a wrong certificate for a linear classifier, q <= alpha.

    At sigma = 0.5, d = 0.3, alpha = 0.05, n = 200: q = 0.0477. The count must lie in the
    central 1 - 2e-6 of Binomial(2000, q), [54, 144] (2.7 %..7.2 %); a bound at 2 * alpha
    (q = 0.091, about 182 expected) or at alpha / 2 (q ≈ 0.02) falls outside.
    """
    from scipy.stats import binom

    sigma, d, alpha, runs, n0, n = 0.5, 0.3, 0.05, 2000, 20, 200
    q = _exact_violation_probability(float(norm.cdf(d / sigma)), n0, n, alpha)
    assert 0.04 < q <= alpha
    model = Linear2(dim=8, b=0.1)
    x = point_at_distance(model, d)
    g = torch.Generator().manual_seed(11)
    violations = 0
    for _ in range(runs):
        pred, r = C.certify(model, x, sigma=sigma, n0=n0, n=n, alpha=alpha, batch=220,
                            num_classes=2, generator=g)
        violations += pred == 1 or r > d
    assert binom.ppf(1e-6, runs, q) <= violations <= binom.isf(1e-6, runs, q)
    assert violations <= binom.isf(1e-6, runs, alpha)


class ByCallOrder(nn.Module):
    """Answers by the order of the noisy samples it sees, not by their content: the first
    ``first_n`` samples (over all calls) are class ``first``, every later one class ``then``.

    CERTIFY's guarantee needs the class chosen on the n0 selection samples and counted on n
    fresh estimation samples; this model makes the two samples disagree on purpose.
    """

    def __init__(self, first_n: int, first: int, then: int, k: int = 10):
        super().__init__()
        self.first_n, self.first, self.then, self.k = first_n, first, then, k
        self.seen = 0
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(self.seen, self.seen + x.shape[0])
        self.seen += x.shape[0]
        self.calls.append(x.shape[0])
        cls = torch.where(idx < self.first_n, self.first, self.then)
        return torch.nn.functional.one_hot(cls, self.k).to(x.dtype)


def test_regression_certify_takes_the_class_from_the_selection_sample():
    """n0 selection samples all say 2, the n estimation samples all say 5: the selected
    class has no estimation votes, so CERTIFY abstains. Taking the class from the estimation
    sample would certify 5 with a large radius (and void the guarantee's independence)."""
    n0, n = 30, 500
    model = ByCallOrder(first_n=n0, first=2, then=5)
    pred, r = C.certify(model, torch.rand(1, 4, 4), sigma=0.5, n0=n0, n=n, alpha=0.001,
                        batch=64, num_classes=10, generator=torch.Generator().manual_seed(0))
    assert (pred, r) == (C.ABSTAIN, 0.0)
    assert model.seen == n0 + n  # n0 for selection, then n fresh samples, nothing more
    # n0 = 30 in batches of 64: one call of 30; then n = 500: 64 * 7 + 52
    assert model.calls == [30] + [64] * 7 + [52]


def test_certify_counts_the_selected_class_in_the_estimation_sample():
    """Selection says 2; the estimation sample says 2 except for its last 7 samples: the
    radius comes from n_A = n - 7 of n, the one-sided Clopper-Pearson bound solved here by
    root-finding on the binomial tail (P_p(X >= n_A) = alpha)."""
    from scipy.optimize import brentq
    from scipy.stats import binom

    n0, n, alpha, sigma = 10, 400, 0.001, 0.25
    model = ByCallOrder(first_n=n0 + n - 7, first=2, then=8)
    pred, r = C.certify(model, torch.rand(1, 4, 4), sigma=sigma, n0=n0, n=n, alpha=alpha,
                        batch=100, num_classes=10, generator=torch.Generator().manual_seed(0))
    k = n - 7
    p_lower = brentq(lambda p: binom.sf(k - 1, n, p) - alpha, 1e-9, 1 - 1e-12, xtol=1e-14)
    assert pred == 2
    assert r == pytest.approx(sigma * norm.ppf(p_lower), rel=1e-7)


def test_certify_draws_n0_then_n_samples_with_the_callers_generator(monkeypatch):
    """A spy on the sampler: selection counts (n0 draws) choose the class, estimation counts
    (n draws, same generator) give n_A; each comes from its own call."""
    calls = []
    answers = [torch.tensor([0, 1, 6, 3]),  # selection: class 2
               torch.tensor([40, 0, 950, 10])]  # estimation: class 0 leads, class 2 counted

    def spy(model, x, num, sigma, num_classes, batch, generator):
        calls.append((num, sigma, num_classes, batch, generator))
        return answers[len(calls) - 1]

    monkeypatch.setattr(C, "sample_noise_counts", spy)
    g = torch.Generator().manual_seed(0)
    pred, r = C.certify(Constant(), torch.rand(1, 2, 2), sigma=0.5, n0=10, n=1000, alpha=0.01,
                        batch=77, num_classes=4, generator=g)
    assert [c[:4] for c in calls] == [(10, 0.5, 4, 77), (1000, 0.5, 4, 77)]
    assert all(c[4] is g for c in calls)
    from scipy.stats import beta

    assert pred == 2
    assert r == pytest.approx(0.5 * norm.ppf(beta.ppf(0.01, 950, 51)), rel=1e-12)


def test_linear_classifier_on_boundary_abstains():
    model = Linear2(dim=8, b=0.1)
    x = point_at_distance(model, 0.0)
    pred, r = C.certify(model, x, sigma=0.5, n0=100, n=5_000, alpha=0.001, batch=1000,
                        num_classes=2, generator=torch.Generator().manual_seed(2))
    assert (pred, r) == (-1, 0.0)
    assert C.predict(model, x, sigma=0.5, n=5_000, alpha=0.001, batch=1000, num_classes=2,
                     generator=torch.Generator().manual_seed(3)) == -1


def test_predict_confident():
    assert C.predict(Constant(cls=3), torch.rand(3, 4, 4), sigma=0.25, n=100, alpha=0.001,
                     num_classes=10, generator=torch.Generator().manual_seed(0)) == 3
    model = Linear2(dim=8, b=0.1)
    x = point_at_distance(model, 0.5)
    assert C.predict(model, x, sigma=0.5, n=2_000, alpha=0.001, num_classes=2,
                     generator=torch.Generator().manual_seed(0)) == 0


@pytest.mark.parametrize("kw", [{"sigma": 0.0}, {"sigma": -1.0}, {"n": 0}, {"alpha": 1.5},
                                {"batch": 0}, {"n0": 0}])
def test_certify_rejects_bad_arguments(kw):
    args = dict(sigma=0.25, n0=10, n=10, alpha=0.001, batch=10, num_classes=10)
    args.update(kw)
    with pytest.raises(ValueError):
        C.certify(Constant(), torch.rand(1, 2, 2), **args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_certify_on_cuda():
    model = Linear2(dim=8, b=0.1).cuda()
    x = point_at_distance(model.cpu(), 0.5).cuda()
    model.cuda()
    pred, r = C.certify(model, x, sigma=0.5, n0=100, n=20_000, alpha=0.001, batch=4000,
                        num_classes=2, generator=torch.Generator(device="cuda").manual_seed(0))
    assert pred == 0 and 0.44 <= r <= 0.5
    with pytest.raises(ValueError, match="generator"):
        C.sample_noise_counts(model, x, 10, 0.5, 2, generator=torch.Generator())


# ----------------------------------------------------------------------------- datasets


def _toy_dataset(size: int = 20):
    """Images at assorted distances from a linear boundary, labelled by their side (some wrong)."""
    model = Linear2(dim=8, b=0.1)
    items = []
    for i in range(size):
        d = 0.05 * (i % 7) + 0.02
        x = point_at_distance(model, d).float()
        label = 0 if i % 5 else 1  # every 5th label is wrong on purpose
        items.append((x, label))
    return model, items


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_certify_dataset_shards_equal_whole_run():
    model, ds = _toy_dataset(20)
    kw = dict(sigma=0.25, n0=20, n=300, alpha=0.001, batch=128, skip=2, num_classes=2, seed=5)
    whole = C.certify_dataset(model, ds, start=0, stop=20, **kw)
    shard_a = C.certify_dataset(model, ds, start=0, stop=10, **kw)
    shard_b = C.certify_dataset(model, ds, start=10, stop=20, **kw)
    assert [r["index"] for r in whole] == list(range(0, 20, 2))
    assert _strip(shard_a + shard_b) == _strip(whole)
    assert _strip(C.certify_dataset(model, ds, **kw)) == _strip(whole)  # stop=None -> len
    for row in whole:
        assert set(row) == {"index", "label", "prediction", "radius", "correct", "seconds"}
        assert row["seconds"] >= 0.0
        assert row["correct"] == (row["prediction"] == row["label"])
        assert row["prediction"] != -1 or row["radius"] == 0.0
    assert any(r["correct"] for r in whole) and not all(r["correct"] for r in whole)
    # the seed matters
    other = C.certify_dataset(model, ds, start=0, stop=20, **{**kw, "seed": 6})
    assert [r["radius"] for r in other] != [r["radius"] for r in whole]


def test_certify_dataset_progress_callback():
    model, ds = _toy_dataset(6)
    seen = []
    rows = C.certify_dataset(model, ds, sigma=0.25, n0=5, n=50, alpha=0.01, batch=50, skip=3,
                             num_classes=2, progress=lambda d, t, r: seen.append((d, t, r)))
    assert [(d, t) for d, t, _ in seen] == [(1, 2), (2, 2)]
    assert [r for _, _, r in seen] == rows


def test_image_seed_differs_per_image_and_per_run_seed():
    """Every image draws its own noise: seeds distinct over images and run seeds, < 2**63."""
    seeds = {C.image_seed(s, i) for s in range(3) for i in range(1000)}
    assert len(seeds) == 3000
    assert all(0 <= v < 2**63 for v in seeds)
    assert C.image_seed(5, 17) == C.image_seed(5, 17)


HAND_ROWS = [
    {"index": 0, "label": 1, "prediction": 1, "radius": 0.3, "correct": True, "seconds": 0.1},
    {"index": 1, "label": 2, "prediction": 2, "radius": 1.0, "correct": True, "seconds": 0.1},
    {"index": 2, "label": 0, "prediction": 4, "radius": 0.8, "correct": False, "seconds": 0.1},
    {"index": 3, "label": 5, "prediction": -1, "radius": 0.0, "correct": False, "seconds": 0.1},
    {"index": 4, "label": 7, "prediction": 7, "radius": 0.0, "correct": True, "seconds": 0.1},
]


def test_certified_accuracy_hand_computed():
    # r=0: rows 0,1,4 -> 3/5; r=0.25: 0,1 -> 2/5; r=0.5: 1 -> 1/5; r=1.0: 1 -> 1/5; r=1.5: 0
    assert C.certified_accuracy(HAND_ROWS, [0.0, 0.25, 0.5, 1.0, 1.5]) == [60.0, 40.0, 20.0,
                                                                          20.0, 0.0]
    with pytest.raises(ValueError):
        C.certified_accuracy([], [0.0])


def test_certification_summary_layout(tmp_path):
    from maxup.io import atomic_write_json

    s = C.certification_summary(HAND_ROWS, sigma=0.25, n0=100, n=100_000, alpha=0.001, skip=20,
                                batch=400)
    assert list(s) == ["sigma", "n0", "n", "alpha", "skip", "batch", "radii",
                       "certified_accuracy", "rows"]
    assert s["radii"] == C.DEFAULT_RADII and len(s["certified_accuracy"]) == 12
    assert s["certified_accuracy"][:5] == [60.0, 40.0, 20.0, 20.0, 20.0]
    assert s["rows"] == HAND_ROWS
    atomic_write_json(tmp_path / "c.json", s)
    assert json.loads((tmp_path / "c.json").read_text()) == s


# ----------------------------------------------------------------------------- CLI


def _parse(argv):
    from maxup.cli import certify as certify_cli

    parser = argparse.ArgumentParser(prog="maxup certify")
    certify_cli.configure(parser)
    return certify_cli, parser.parse_args(argv)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--sigma", "-0.25"], "--sigma"),
        (["--sigma", "0"], "--sigma"),
        (["--sigma", "nan"], "--sigma"),
        (["--sigma", "0.25", "--n", "0"], "--n"),
        (["--sigma", "0.25", "--alpha", "1.5"], "--alpha"),
        (["--sigma", "0.25", "--alpha", "0"], "--alpha"),
        (["--sigma", "0.25", "--batch", "0"], "--batch"),
        (["--sigma", "0.25", "--skip", "0"], "--skip"),
        (["--sigma", "0.25", "--max-images", "0"], "--max-images"),
        (["--sigma", "0.25", "--device", "tpu"], "--device"),
    ],
)
def test_cli_bad_values_raise_usage_error(tmp_path, argv, flag):
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"not read")
    cli, args = _parse([str(ckpt), *argv])
    with pytest.raises(UsageError) as info:
        cli.run(args)
    msg = str(info.value)
    assert msg.startswith(flag + ":") and "\n" not in msg and "allowed" in msg


def test_cli_missing_checkpoint(tmp_path):
    out = tmp_path / "out.json"
    cli, args = _parse([str(tmp_path / "nope.pt"), "--sigma", "0.25", "--out", str(out)])
    with pytest.raises(UsageError, match="CHECKPOINT.*nope.pt"):
        cli.run(args)
    assert not out.exists()


# ----------------------------------------------------------------------------- checkpoints


class NotAllowed:
    """An arbitrary object: ``weights_only=True`` must refuse to unpickle it."""


def test_load_checkpoint_refuses_pickles_and_bad_layout(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"config": {}, "model": {}, "x": NotAllowed()}, p)
    with pytest.raises(DataError, match="weights_only"):
        C.load_model_from_checkpoint(p)
    q = tmp_path / "bad.pt"
    torch.save({"model": {}}, q)
    with pytest.raises(DataError, match="'config'"):
        C.load_model_from_checkpoint(q)
    with pytest.raises(DataError, match="no such file"):
        C.load_model_from_checkpoint(tmp_path / "missing.pt")


def _real_checkpoint(tmp_path, data_name="fashion_mnist", model_name="small_cnn"):
    from maxup.data import dataset_info
    from maxup.models import build_model

    info = dataset_info(data_name)
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=info.num_classes, in_channels=info.in_channels,
                        mean=info.mean, std=info.std, dropout=0.0,
                        image_size=tuple(info.image_size))
    config = {"model": {"name": model_name, "num_classes": None, "dropout": 0.0},
              "data": {"name": data_name, "root": None}, "seed": 0}
    path = tmp_path / "ckpt.pt"
    torch.save({"config": config, "model": model.state_dict(), "epoch": 3}, path)
    return model, config, info, path


@pytest.mark.parametrize("data_name, model_name",
                         [("fashion_mnist", "small_cnn"), ("fashion_mnist", "mlp"),
                          ("cifar10", "resnet20")])
def test_load_model_from_checkpoint_roundtrip(tmp_path, data_name, model_name):
    model, config, info, path = _real_checkpoint(tmp_path, data_name, model_name)
    loaded, cfg = C.load_model_from_checkpoint(path)
    assert cfg == config and not loaded.training
    x = torch.rand(4, info.in_channels, *info.image_size)
    model.eval()
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))


def test_load_checkpoint_architecture_mismatch_is_one_line(tmp_path):
    _, config, _, path = _real_checkpoint(tmp_path, "fashion_mnist", "small_cnn")
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["model"]["name"] = "mlp"
    torch.save(ckpt, path)
    with pytest.raises(DataError, match="do not fit model 'mlp'") as info:
        C.load_model_from_checkpoint(path)
    assert "\n" not in str(info.value)


def _constant_checkpoint(tmp_path, cls: int, data_name: str = "fashion_mnist"):
    """A real ``mlp`` checkpoint whose network answers ``cls`` for every input: all weights
    zero, the last layer's bias one-hot. Under any noise its count is n_A = n."""
    from maxup.data import dataset_info
    from maxup.models import build_model

    info = dataset_info(data_name)
    model = build_model("mlp", num_classes=info.num_classes, in_channels=info.in_channels,
                        mean=info.mean, std=info.std, dropout=0.0,
                        image_size=tuple(info.image_size))
    params = {name for name, _ in model.named_parameters()}  # not the normalisation buffers
    state = {k: torch.zeros_like(v) if k in params else v for k, v in model.state_dict().items()}
    last_bias = [k for k in state if k in params and k.endswith("bias")][-1]
    state[last_bias][cls] = 5.0
    config = {"model": {"name": "mlp", "num_classes": None, "dropout": 0.0},
              "data": {"name": data_name, "root": None}, "seed": 0}
    path = tmp_path / "constant.pt"
    torch.save({"config": config, "model": state, "epoch": 1}, path)
    return info, path


def test_cli_end_to_end_known_answer(tmp_path, monkeypatch, capsys):
    """A constant classifier through the CLI: every image gets class 3 with radius
    sigma * Phi^-1(alpha ** (1 / n)) (the one-sided CP bound at n_A = n), so certified
    accuracy is the share of label-3 images at every radius up to that, then 0."""
    import maxup.data

    cls, sigma, n, alpha = 3, 0.5, 1000, 0.001
    info, path = _constant_checkpoint(tmp_path, cls)
    labels = [3, 1, 3, 3, 0, 7, 3, 2, 9, 3, 5, 3]
    fake = [(torch.rand(info.in_channels, *info.image_size), y) for y in labels]
    calls = []

    def fake_build_dataset(name, *, split, root=None, **kw):
        calls.append((name, split, root))
        return fake

    monkeypatch.setattr(maxup.data, "build_dataset", fake_build_dataset)
    out = tmp_path / "cert" / "summary.json"
    cli, args = _parse([str(path), "--sigma", str(sigma), "--n", str(n), "--n0", "10",
                        "--batch", "250", "--skip", "2", "--max-images", "5", "--device", "cpu",
                        "--alpha", str(alpha), "--data.root", str(tmp_path), "--out", str(out)])
    assert cli.run(args) == 0
    assert calls == [("fashion_mnist", "test", str(tmp_path))]
    summary = json.loads(out.read_text())
    radius = sigma * norm.ppf(alpha ** (1 / n))  # 1.2316
    picked = [0, 2, 4, 6, 8]
    assert [r["index"] for r in summary["rows"]] == picked
    assert [r["label"] for r in summary["rows"]] == [labels[i] for i in picked]
    assert all(r["prediction"] == cls for r in summary["rows"])
    assert [r["radius"] for r in summary["rows"]] == pytest.approx([radius] * 5, rel=1e-9)
    assert [r["correct"] for r in summary["rows"]] == [True, True, False, True, False]
    share = 100.0 * 3 / 5
    expected = [share if r <= radius else 0.0 for r in C.DEFAULT_RADII]
    assert expected[:5] == [60.0] * 5 and expected[5:] == [0.0] * 7
    assert summary["certified_accuracy"] == pytest.approx(expected)
    assert (summary["sigma"], summary["n"], summary["n0"], summary["skip"]) == (sigma, n, 10, 2)
    assert summary["alpha"] == alpha
    tsv = out.with_suffix(".tsv").read_text().splitlines()
    assert tsv[0].split("\t") == ["idx", "label", "predict", "radius", "correct", "time"]
    assert [line.split("\t")[:3] for line in tsv[1:]] == [
        [str(i), str(labels[i]), "3"] for i in picked]
    assert [float(line.split("\t")[3]) for line in tsv[1:]] == pytest.approx([radius] * 5)
    printed = capsys.readouterr().out
    assert printed.count("radius") == 12
    assert "radius 1.00: 60.0%" in printed and "radius 1.25: 0.0%" in printed


def test_cohen_format_file_reads_like_their_analyze(tmp_path):
    """The .tsv beside the summary is Cohen et al.'s certify.py output: pandas reads it with
    their analyze.py's call, and certified accuracy from it equals our summary's."""
    import pandas as pd

    rows = [{"index": i, "label": i % 3, "prediction": (i % 3) if i % 4 else -1,
             "radius": 0.0 if i % 4 == 0 else 0.1 * i, "correct": bool(i % 4),
             "seconds": 1.5 + i} for i in range(12)]
    rows[5]["prediction"], rows[5]["correct"] = 0, False  # certified, wrong class
    path = tmp_path / "certify.tsv"
    path.write_text(C.cohen_tsv(rows))
    df = pd.read_csv(path, delimiter="\t")  # as code/analyze.py reads it
    assert list(df.columns) == ["idx", "label", "predict", "radius", "correct", "time"]
    assert df["idx"].tolist() == list(range(12)) and df["predict"].tolist()[0] == -1
    assert df["time"].iloc[0] == "0:00:01.500000"
    summary = C.certification_summary(rows, sigma=0.25, n0=1, n=1, alpha=0.001, skip=1,
                                      batch=1)
    for r, ours in zip(summary["radii"], summary["certified_accuracy"]):
        theirs = 100.0 * (df["correct"].astype(bool) & (df["radius"] >= r)).mean()
        assert theirs == pytest.approx(ours)
    # Independent count at r = 0.5: correct rows with 0.1 * i >= 0.5, i not a multiple of 4.
    expect = sum(1 for i in range(12) if i % 4 and i != 5 and 0.1 * i >= 0.5) / 12 * 100
    assert summary["certified_accuracy"][2] == pytest.approx(expect)


def test_cli_end_to_end_real_digits(tmp_path, capsys):
    """No fakes: a digits checkpoint, the real test split, summary JSON via the CLI."""
    _, _, _, path = _real_checkpoint(tmp_path, "digits", "small_cnn")
    out = tmp_path / "digits.json"
    cli, args = _parse([str(path), "--sigma", "0.5", "--n", "40", "--n0", "8", "--batch", "40",
                        "--skip", "100", "--device", "auto", "--out", str(out)])
    assert cli.run(args) == 0
    summary = json.loads(out.read_text())
    assert [r["index"] for r in summary["rows"]] == [0, 100, 200, 300, 400, 500]  # 540 images
    assert summary["radii"] == C.DEFAULT_RADII
    assert "certified accuracy" in capsys.readouterr().out
