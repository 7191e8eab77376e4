"""Per-arm statistics over seeds: n, mean, sample std, Student-t 95% CI; Welch tests vs baseline.

An *arm* is one setting of every config column except the seed and the run-local columns in
:data:`EXCLUDED_COLUMNS`; its seeds are its observations. Only completed trials count: failed
trials and interim ("running") records never enter a mean. A trial two sweeps planned is one
observation; equal values of different trials are never de-duplicated (two seeds that reach
the same accuracy are two observations).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

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
