"""Per-arm statistics over seeds: n, mean, sample std, Student-t 95% CI; an arm against its
baseline by the paired t-test over common seeds (:func:`compare_seeds`), else Welch's test.

An *arm* is one setting of every config column except the seed and the run-local columns in
:data:`EXCLUDED_COLUMNS`; its seeds are its observations. Only completed trials count: failed
trials and interim ("running") records never enter a mean. A trial two sweeps planned is one
observation; equal values of different trials are never de-duplicated (two seeds that reach
the same accuracy are two observations).

Two arms are compared by :func:`compare_seeds`: a seed fixes a trial's initialisation, data
subset and batch order (and a language model's BPTT window lengths) whatever its arm, so arms
that ran the same seeds are paired by design. With at least :data:`MIN_PAIRS` common seeds
the paired t-test on the per-seed differences is used (:func:`paired_difference`: mean
difference, its 95 % t-interval, p, the number of pairs); otherwise Welch's unequal-variance
test on all values (:func:`welch_difference`). The choice depends on which seeds exist, never
on the values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats as sps

from maxup import identity
from maxup.analysis.load import completed, unique_trials

#: Config columns that do not define an arm: the seed (the replicate index) and every setting
#: outside the trial identity (:mod:`maxup.identity`: where/how a run executed, and the
#: post-hoc ``certify.*`` section). Pass ``by=`` to group by them explicitly (e.g. certified
#: accuracy per ``config.certify.sigma``).
EXCLUDED_COLUMNS: tuple[str, ...] = tuple(
    f"config.{k}" for k in (identity.SEED_KEY, *identity.NON_IDENTITY_KEYS))
#: Prefixes of column families excluded the same way.
EXCLUDED_PREFIXES: tuple[str, ...] = (f"config.{identity.CERTIFY_SECTION}.",)
CONFIDENCE = 0.95
STAT_COLUMNS = ("n", "mean", "std", "ci_low", "ci_high", "min", "max")
#: Why a t-test is undefined although both sides have values: its statistic is 0/0 or
#: infinite (every observation of both arms equal within each; every pair differing alike).
NO_ARM_VARIANCE = "no within-arm variance on either side"
NO_PAIR_VARIANCE = "the paired differences have no variance"


def is_excluded(column: str) -> bool:
    """Whether a config column is excluded from arm keys (:func:`maxup.identity.is_arm_key`).

    Args:
        column: a dotted column name (``config.maxup.m``).
    """
    return not identity.is_arm_key(column.removeprefix("config."))


def arm_columns(df: pd.DataFrame, varying_only: bool = True) -> list[str]:
    """The config columns that define arms, in frame order.

    Args:
        df: a records frame.
        varying_only: keep only columns with more than one distinct value (NaN counts as one);
            constant columns never split a group.
    """
    cols = [c for c in df.columns if c.startswith("config.") and not is_excluded(c)]
    if varying_only:
        cols = [c for c in cols if df[c].nunique(dropna=False) > 1]
    return cols


def t_interval(mean: float, std: float, n: int, confidence: float = CONFIDENCE):
    """Student-t confidence interval for a mean (NaN bounds when n < 2).

    Args:
        mean: sample mean.
        std: sample standard deviation (ddof = 1).
        n: number of observations.
        confidence: two-sided coverage.
    """
    if n < 2 or not math.isfinite(std):
        return (math.nan, math.nan)
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return (mean - half, mean + half)


def describe(values: Iterable[float]) -> dict:
    """n, mean, std (ddof 1; NaN for n = 1), 95% t-interval, min, max of finite values.

    Args:
        values: the observations (NaN/None are dropped).
    """
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci_low": math.nan,
                "ci_high": math.nan, "min": math.nan, "max": math.nan}
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if n > 1 else math.nan
    lo, hi = t_interval(mean, std, n)
    return {"n": n, "mean": mean, "std": std, "ci_low": lo, "ci_high": hi,
            "min": float(arr.min()), "max": float(arr.max())}


def _norm(value):
    """Hashable, NaN-free group key component."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def _groups(df: pd.DataFrame, metric: str, keys: list[str]) -> dict[tuple, np.ndarray]:
    vals = pd.to_numeric(df[metric], errors="coerce") if metric in df else pd.Series(
        np.nan, index=df.index)
    if not keys:
        return {(): vals.to_numpy(dtype=float)} if len(df) else {}
    out: dict[tuple, list] = {}
    key_arrays = [df[k].to_numpy(dtype=object) for k in keys]
    v = vals.to_numpy(dtype=float)
    for i in range(len(df)):
        key = tuple(_norm(a[i]) for a in key_arrays)
        out.setdefault(key, []).append(v[i])
    return {k: np.asarray(x, dtype=float) for k, x in out.items()}


def _sort_key(key: tuple):
    return tuple((0, x) if isinstance(x, (int, float)) and not isinstance(x, bool)
                 else (1, "" if x is None else str(x)) for x in key)


def aggregate(df: pd.DataFrame, metric: str = "final.test_acc",
              by: list[str] | None = None) -> pd.DataFrame:
    """Per-arm statistics of ``metric`` over the completed trials.

    Args:
        df: a frame from :func:`maxup.analysis.load_records` (any statuses; only completed rows
            are used).
        metric: the column to summarise, e.g. ``"final.test_acc"`` or ``"best.test_acc"``.
        by: the grouping columns; default :func:`arm_columns` (every varying config column except
            the seed and :data:`EXCLUDED_COLUMNS`).

    Returns:
        one row per arm: the ``by`` columns, then ``n, mean, std, ci_low, ci_high, min, max``
        (std with ddof = 1, NaN for n = 1; 95% Student-t interval at n - 1 dof).
    """
    done = unique_trials(completed(df))
    keys = list(arm_columns(done) if by is None else by)
    rows = []
    groups = _groups(done, metric, keys)
    for key in sorted(groups, key=_sort_key):
        row = dict(zip(keys, key))
        row.update(describe(groups[key]))
        rows.append(row)
    return pd.DataFrame(rows, columns=[*keys, *STAT_COLUMNS])


def welch(a: Iterable[float], b: Iterable[float]) -> float:
    """Two-sided Welch t-test p-value (NaN when either side has fewer than 2 values).

    Args:
        a: observations of one arm.
        b: observations of the other arm.
    """
    a = np.asarray(list(a), dtype=float)
    b = np.asarray(list(b), dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size < 2 or b.size < 2:
        return math.nan
    if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:
        return math.nan  # undefined: no within-arm variance on either side
    return float(sps.ttest_ind(a, b, equal_var=False).pvalue)


#: Two-sided level and power of the sensitivity statement (:func:`detectable_difference`).
ALPHA = 0.05
POWER = 0.8

#: The tests :func:`compare_seeds` chooses between.
PAIRED = "paired"
WELCH = "Welch"
#: Common seeds two arms need for the paired test (fewer: Welch on all their seeds).
MIN_PAIRS = 2


@dataclass(frozen=True)
class Difference:
    """One arm against another: the difference of their means, its 95 % CI and the test.

    Args:
        test: :data:`PAIRED` (per-seed differences over the seeds both arms finished) or
            :data:`WELCH` (the two arms' seeds as independent samples).
        diff: paired: the mean of the per-seed differences (a − b); Welch: mean(a) − mean(b).
        ci_low: lower bound of the two-sided 95 % Student-t interval of ``diff`` (paired:
            n_pairs − 1 dof; Welch: Welch-Satterthwaite dof); NaN where the test is undefined.
        ci_high: upper bound.
        p_value: two-sided p of the test; NaN where it is undefined.
        n_pairs: the pairs behind a paired test (0 for Welch).
        n_a, n_b: each arm's finite observations.
        dof: degrees of freedom of the t distribution used (NaN where undefined).
        undefined: why no p-value exists (empty when there is one).
        detectable: the design's sensitivity: the smallest |difference| this test, with these
            pairs or sample sizes and the spread observed, detects with probability
            :data:`POWER` at two-sided level :data:`ALPHA` (:func:`detectable_difference`);
            NaN where the test is undefined.
    """

    test: str
    diff: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    n_pairs: int = 0
    n_a: int = 0
    n_b: int = 0
    dof: float = math.nan
    undefined: str = ""
    detectable: float = math.nan


def _finite(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray(list(values), dtype=float)
    return arr[np.isfinite(arr)]


def detectable_difference(se: float, dof: float, alpha: float = ALPHA,
                          power: float = POWER) -> float:
    """The smallest true difference a two-sided t-test detects with probability ``power``.

    The test rejects when |diff / se| > t_(1 - alpha/2, dof); for a true difference Δ the
    statistic follows the noncentral t with ``dof`` degrees of freedom and noncentrality
    Δ / se, so the power is P(|T'| > t_crit). Returned: the Δ ≥ 0 where that power equals
    ``power`` (a paired test: se = SD of the differences / sqrt(pairs), dof = pairs − 1;
    Welch: se = sqrt(var_a/n_a + var_b/n_b), Welch–Satterthwaite dof, taking the observed
    spread as the true one). NaN for a non-finite or non-positive ``se`` or ``dof``.

    Args:
        se: standard error of the difference.
        dof: degrees of freedom of the test.
        alpha: two-sided level.
        power: the probability of rejecting wanted.
    """
    from scipy.optimize import brentq

    if not (math.isfinite(se) and se > 0 and math.isfinite(dof) and dof > 0):
        return math.nan
    crit = float(sps.t.ppf(1 - alpha / 2, dof))

    def short(nc: float) -> float:
        # The far tail is negligible where scipy's series fails for it (NaN): count it 0.
        far = float(sps.nct.cdf(-crit, dof, nc))
        return float(sps.nct.sf(crit, dof, nc)) + (far if math.isfinite(far) else 0.0) - power

    hi = crit + 1.0
    while short(hi) < 0:  # power grows with the noncentrality: widen until it brackets
        hi *= 2
    return brentq(short, 0.0, hi, xtol=1e-10) * se


def _t_test(diff: float, se: float, dof: float, confidence: float) -> tuple[float, ...]:
    """(ci_low, ci_high, p) of a t statistic diff / se at ``dof`` degrees of freedom."""
    half = float(sps.t.ppf(0.5 + confidence / 2, dof)) * se
    p = float(2 * sps.t.sf(abs(diff) / se, dof))
    return diff - half, diff + half, p


def welch_difference(a: Iterable[float], b: Iterable[float],
                     confidence: float = CONFIDENCE) -> Difference:
    """Welch's unequal-variance t-test of mean(a) − mean(b) with its CI.

    Undefined (NaN p and CI) when either side has fewer than 2 finite values or neither has
    any variance, as :func:`welch`.

    Args:
        a: observations of one arm (non-finite values dropped).
        b: observations of the other arm.
        confidence: two-sided coverage of the interval.
    """
    a, b = _finite(a), _finite(b)
    diff = float(a.mean() - b.mean()) if a.size and b.size else math.nan
    out = Difference(WELCH, diff, n_a=int(a.size), n_b=int(b.size))
    if a.size < 2 or b.size < 2:
        return replace(out, undefined="fewer than 2 seeds a side")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va == 0 and vb == 0:
        return replace(out, undefined=NO_ARM_VARIANCE)
    dof = float((va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1)))
    se = math.sqrt(va + vb)
    lo, hi, p = _t_test(diff, se, dof, confidence)
    return replace(out, ci_low=lo, ci_high=hi, p_value=p, dof=dof,
                   detectable=detectable_difference(se, dof))


def paired_difference(a: Mapping[object, float], b: Mapping[object, float],
                      confidence: float = CONFIDENCE) -> Difference:
    """The paired t-test over the seeds both arms have: mean of (a[s] − b[s]), its CI, p.

    Only seeds with a finite value on both sides are paired; the others are left out (the
    result's ``n_pairs`` says how many remain). Undefined (NaN p and CI) with fewer than 2
    pairs or when every pair differs by the same amount (no variance of the differences: the
    t statistic is 0/0 or infinite).

    Args:
        a: seed -> value of one arm.
        b: seed -> value of the other arm.
        confidence: two-sided coverage of the interval.
    """
    common = sorted((s for s in a if s in b and math.isfinite(a[s]) and math.isfinite(b[s])),
                    key=_sort_key_one)
    d = np.asarray([float(a[s]) - float(b[s]) for s in common], dtype=float)
    n_a = sum(1 for v in a.values() if math.isfinite(v))
    n_b = sum(1 for v in b.values() if math.isfinite(v))
    out = Difference(PAIRED, float(d.mean()) if d.size else math.nan, n_pairs=int(d.size),
                     n_a=n_a, n_b=n_b)
    if d.size < 2:
        return replace(out, undefined="fewer than 2 common seeds")
    sd = float(d.std(ddof=1))
    if sd == 0:
        return replace(out, undefined=NO_PAIR_VARIANCE)
    dof = float(d.size - 1)
    se = sd / math.sqrt(d.size)
    lo, hi, p = _t_test(float(d.mean()), se, dof, confidence)
    return replace(out, ci_low=lo, ci_high=hi, p_value=p, dof=dof,
                   detectable=detectable_difference(se, dof))


def _sort_key_one(x):
    return _sort_key((x,))


def compare_seeds(a: Mapping[object, float], b: Mapping[object, float],
                  min_pairs: int = MIN_PAIRS, confidence: float = CONFIDENCE) -> Difference:
    """Arm ``a`` against arm ``b``: paired by seed when they share at least ``min_pairs``
    seeds with finite values (the same seed gives both arms the same initialisation, data
    subset and batch order, and a language model the same BPTT window lengths), else Welch
    on all their values.

    Args:
        a: seed -> value of one arm (its finished seeds).
        b: seed -> value of the other arm.
        min_pairs: common seeds needed for the paired test.
        confidence: two-sided coverage of the interval.
    """
    common = [s for s in a if s in b and math.isfinite(a[s]) and math.isfinite(b[s])]
    if len(common) >= min_pairs:
        return paired_difference(a, b, confidence)
    return welch_difference(a.values(), b.values(), confidence)
