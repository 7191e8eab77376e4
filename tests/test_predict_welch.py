"""Certification's PREDICT and the tables' Welch test against answers computed here.

PREDICT (Cohen et al. 2019, Algorithm "PREDICT"; locuslab/smoothing ``core.py``): count the
base classifier's votes, take the two largest counts n_A (top class) and n_B (runner-up) and
abstain unless the two-sided binomial test of n_A successes in n_A + n_B draws at p = 1/2
rejects at level alpha. The votes come from a scripted classifier, so the counts are exact;
the p-values are summed here from binomial coefficients.

Welch's unequal-variance t-test is written out (t statistic, Welch-Satterthwaite degrees of
freedom) and checked at its edges: one arm without variance, both without, single
observations, non-finite values.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from scipy import stats as sps
from torch import nn

from maxup import certify as C
from maxup.analysis.stats import welch


def binom_two_sided(k: int, n: int) -> float:
    """Two-sided exact binomial p-value at p = 1/2: the probability of every outcome no more
    likely than k (exact rational arithmetic)."""
    pk = math.comb(n, k)
    return float(Fraction(sum(math.comb(n, i) for i in range(n + 1) if math.comb(n, i) <= pk),
                          2 ** n))


class Scripted(nn.Module):
    """Votes a fixed sequence of classes, one per noisy sample, in order (the noise is
    ignored), so the counts PREDICT sees are exactly the script's."""

    def __init__(self, counts: list[int]):
        super().__init__()
        self.k = len(counts)
        # interleaved, so that every batch holds a mix of classes
        votes = [c for c, n in enumerate(counts) for _ in range(n)]
        g = torch.Generator().manual_seed(0)
        self.votes = [votes[i] for i in torch.randperm(len(votes), generator=g).tolist()]
        self.pos = 0

    def forward(self, x):
        b = x.shape[0]
        cls = torch.tensor(self.votes[self.pos:self.pos + b])
        self.pos += b
        return nn.functional.one_hot(cls, self.k).to(x.dtype)


def _predict(counts: list[int], alpha: float) -> int:
    return C.predict(Scripted(counts), torch.zeros(1, 2, 2), sigma=0.25, n=sum(counts),
                     alpha=alpha, batch=7, num_classes=len(counts),
                     generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("k", "n"), [(60, 90), (60, 100), (55, 100), (20, 20), (7, 10),
                                      (3, 10), (5, 10), (0, 4)])
def test_predict_pvalue_is_the_exact_two_sided_binomial_test(k, n):
    assert C.predict_pvalue(k, n - k) == pytest.approx(binom_two_sided(k, n), rel=1e-9)


@pytest.mark.parametrize(("counts", "alpha", "expected"), [
    # top vs runner-up: 60 of 90 -> p = 0.0022 < 0.01, class 1. (Top vs all the others, 60
    # of 100, would give p = 0.057 and abstain.)
    ([0, 60, 30, 10], 0.01, 1),
    # 55 vs 45 -> p = 0.37: abstain. (Top vs the *least* voted class, 55 of 55, would answer.)
    ([55, 45, 0, 0], 0.01, C.ABSTAIN),
    # the runner-up is the second count whatever its index: 40 vs 25 of 65 -> p = 0.082
    ([25, 5, 40, 0, 10], 0.05, C.ABSTAIN),
    ([25, 5, 40, 0, 10], 0.1, 2),
    # a tie at the top never answers
    ([30, 30, 1], 0.5, C.ABSTAIN),
    # no runner-up votes: 20 of 20, p = 2^-19
    ([0, 0, 20, 0], 0.001, 2),
])
def test_predict_tests_the_top_class_against_the_runner_up(counts, alpha, expected):
    top = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    p = binom_two_sided(counts[top[0]], counts[top[0]] + counts[top[1]])
    assert (p <= alpha) == (expected != C.ABSTAIN)  # the hand rule gives the expected answer
    assert _predict(counts, alpha) == expected


def test_predict_with_one_class_tests_n_against_zero():
    # a single class: n_B = 0, p = 2 * 2^-10 = 0.00195
    assert _predict([10], 0.01) == 0
    assert _predict([10], 0.001) == C.ABSTAIN


# --------------------------------------------------------------------------- Welch

def welch_by_hand(a: list[float], b: list[float]) -> float:
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    se2 = va / na + vb / nb
    t = (ma - mb) / math.sqrt(se2)
    df = se2 ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    return float(2 * sps.t.sf(abs(t), df))


@pytest.mark.parametrize(("a", "b"), [
    ([71.2, 72.0, 70.8, 71.5, 72.3], [70.1, 70.9, 69.8, 70.4, 70.6]),
    ([1.0, 2.0, 4.0], [2.0, 2.5, 3.0, 3.5, 9.0, 1.0]),
])
def test_welch_known_answers(a, b):
    assert welch(a, b) == pytest.approx(welch_by_hand(a, b), rel=1e-9)
    assert welch(b, a) == pytest.approx(welch(a, b), rel=1e-12)


@pytest.mark.filterwarnings("ignore:Precision loss occurred in moment calculation")
def test_welch_with_one_arm_without_variance_is_a_one_sample_t_test():
    """b has no spread: the statistic is (mean a - 5)/(s_a/sqrt n_a) with n_a - 1 degrees of
    freedom (Welch-Satterthwaite reduces to it), a finite p-value, not NaN."""
    a, b = [1.0, 2.0, 3.0, 3.5], [5.0, 5.0, 5.0]
    ma = sum(a) / 4
    sa = math.sqrt(sum((x - ma) ** 2 for x in a) / 3)
    expected = 2 * sps.t.sf(abs(ma - 5.0) / (sa / 2), 3)
    assert welch(a, b) == pytest.approx(expected, rel=1e-9)
    assert welch(b, a) == pytest.approx(expected, rel=1e-9)
    assert 0 < expected < 0.05


@pytest.mark.parametrize(("a", "b"), [
    ([5.0, 5.0, 5.0], [5.0, 5.0]),  # no variance on either side: undefined
    ([5.0, 5.0, 5.0], [6.0, 6.0]),
    ([1.0], [2.0, 3.0, 4.0]),  # one observation: no variance estimate
    ([], [2.0, 3.0]),
])
@pytest.mark.filterwarnings("ignore:Precision loss occurred in moment calculation")
def test_welch_is_nan_where_undefined(a, b):
    assert math.isnan(welch(a, b)) and math.isnan(welch(b, a))


def test_welch_drops_non_finite_values():
    a, b = [1.0, 2.0, float("nan"), 3.5, float("inf")], [4.0, 5.5, 6.0]
    assert welch(a, b) == pytest.approx(welch_by_hand([1.0, 2.0, 3.5], b), rel=1e-9)
    assert math.isnan(welch([1.0, float("nan")], b))  # one finite value left
