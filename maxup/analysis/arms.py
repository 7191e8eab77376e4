"""Arms: what one table cell aggregates, with every seed accounted for.

An *arm* is one experiment without its seed (:func:`maxup.identity.arm_id`); its trials are
its seeds. :func:`arm_stats` summarises one arm's records of any status, each trial once
(a trial two sweeps planned is one observation):

- ``n``: finished seeds with a finite value of the metric — the only values in the mean;
- ``n_diverged``: seeds that failed on a non-finite loss or metric, or completed without a
  finite value of the metric (never silently dropped from ``n``);
- ``n_failed``: seeds that failed for any other reason;
- ``n_running``: interim records (a sweep still running or interrupted);
- ``n_corrupt``: seeds whose record cannot be used (:mod:`maxup.store`: it does not parse or
  is not the trial it claims to be);
- ``n_pending``: seeds a sweep planned that have no record yet;
- ``n_planned``: every seed of the arm among the rows (each trial once): the sum of all the
  above, so a cell reads the same whichever folder level the storage was loaded from.

:func:`baseline_of` finds an arm's baseline: the arm equal to it in every key except the
ablated one (:func:`maxup.identity.counterpart_arm_id`); nothing is pooled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from maxup import identity, store
from maxup.analysis.load import completed, unique_trials
from maxup.analysis.stats import _norm, _sort_key, arm_columns, describe, welch
from maxup.config import get_dotted
from maxup.records import Status

#: Failure reasons that mean the run diverged (the engine's non-finite guards).
DIVERGED_REASONS = ("non-finite loss", "non-finite metric")
#: Cells with fewer finished seeds than this are marked (the paper reports five seeds).
MIN_SEEDS = 5


@dataclass
class ArmStats:
    """One arm's statistics of one metric (see the module docstring for the counts).

    Args:
        arm_id: the arm id.
        config: the resolved config of one of its trials (seed aside, all are equal).
        values: the finite metric values of its finished seeds (scaled), one per trial.
        n_failed, n_diverged, n_running, n_corrupt, n_pending, n_planned: the seed counts.
    """

    arm_id: str
    config: dict
    values: np.ndarray
    n_failed: int = 0
    n_diverged: int = 0
    n_running: int = 0
    n_planned: int = 0
    n_corrupt: int = 0
    n_pending: int = 0
    stats: dict = field(init=False)

    def __post_init__(self) -> None:
        self.stats = describe(self.values)

    @property
    def n(self) -> int:
        return int(self.stats["n"])

    @property
    def mean(self) -> float:
        return float(self.stats["mean"])


def _is_diverged_failure(rows: pd.DataFrame) -> pd.Series:
    reason = rows["failure.reason"] if "failure.reason" in rows else pd.Series(
        None, index=rows.index, dtype=object)
    return reason.isin(DIVERGED_REASONS)


def arm_stats(rows: pd.DataFrame, metric: str, scale: float = 1.0,
              same_seeds_as: str | None = None) -> ArmStats:
    """Statistics of one arm's rows (all of one ``arm_id``; any status).

    Args:
        rows: the arm's rows of a frame from :func:`maxup.analysis.load_records`.
        metric: the column summarised (``"final.test_acc"``).
        scale: factor applied to each value.
        same_seeds_as: another column (``"final.test_acc"`` for ``"best.test_acc"``): only
            seeds with a finite value of it enter, so two columns of one arm share their n
            (a seed whose final value is NaN is diverged in both).
    """
    rows = unique_trials(rows)
    arm = str(rows["arm_id"].iloc[0])
    status = rows["status"]
    done = rows[status == Status.COMPLETED]
    vals = pd.to_numeric(done[metric], errors="coerce") if metric in done else pd.Series(
        np.nan, index=done.index)
    if same_seeds_as is not None:
        gate = (pd.to_numeric(done[same_seeds_as], errors="coerce") if same_seeds_as in done
                else pd.Series(np.nan, index=done.index))
        vals = vals.where(np.isfinite(gate.to_numpy(dtype=float)))
    finite = vals.to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)] * scale
    failed = rows[status == Status.FAILED]
    diverged_fail = int(_is_diverged_failure(failed).sum())
    recorded = rows[~status.isin((store.PENDING, store.CORRUPT))]
    return ArmStats(arm_id=arm, config=_config_of((recorded if len(recorded) else rows).iloc[0]),
                    values=finite, n_failed=len(failed) - diverged_fail,
                    n_diverged=diverged_fail + int(len(done) - finite.size),
                    n_running=int((status == Status.RUNNING).sum()), n_planned=len(rows),
                    n_corrupt=int((status == store.CORRUPT).sum()),
                    n_pending=int((status == store.PENDING).sum()))


def _config_of(row: pd.Series) -> dict:
    cfg = row.get("run_config")
    return cfg if isinstance(cfg, dict) else {}


def arms_of(rows: pd.DataFrame, metric: str, scale: float = 1.0,
            same_seeds_as: str | None = None) -> list[ArmStats]:
    """:func:`arm_stats` of every arm among ``rows``, in order of first appearance.

    Args:
        rows: rows of a loaded frame (any statuses).
        metric: the column summarised.
        scale: factor applied to each value.
        same_seeds_as: as in :func:`arm_stats`.
    """
    if not len(rows) or "arm_id" not in rows:
        return []
    return [arm_stats(group, metric, scale, same_seeds_as)
            for _, group in rows.groupby("arm_id", sort=False)]


def config_value(config: dict, key: str):
    """The value of dotted ``key`` (``"maxup.m"``) in a nested config, None when absent."""
    try:
        return get_dotted(config, key)
    except (KeyError, TypeError):
        return None


def first_of_arm(df: pd.DataFrame) -> pd.DataFrame:
    """The first row of each arm, indexed by arm id (its columns label the arm).

    Args:
        df: rows of a loaded frame.
    """
    if "arm_id" not in df:
        return df
    return df.drop_duplicates("arm_id").set_index("arm_id", drop=False)


@dataclass(frozen=True)
class Comparison:
    """An arm against its baseline: ``diff`` = arm mean − baseline mean, Welch ``p``."""

    base: ArmStats | None
    diff: float = math.nan
    p_value: float = math.nan

    @property
    def found(self) -> bool:
        return self.base is not None


def baseline_of(arm: ArmStats, key: str, value, pool: dict[str, ArmStats]) -> Comparison | None:
    """The arm's comparison with its baseline: the arm equal to it except ``key`` = ``value``.

    Args:
        arm: the arm.
        key: the ablated dotted config key (``"maxup.m"``).
        value: the baseline's value of it (``1``).
        pool: arm id -> statistics of every arm the baseline may be.

    Returns:
        None when ``arm`` is itself a baseline; a :class:`Comparison` with ``base=None``
        when no matching baseline arm exists (never a pooled one).
    """
    if config_value(arm.config, key) == value:
        return None
    base = pool.get(identity.counterpart_arm_id(arm.config, key, value))
    if base is None or base.n == 0:
        return Comparison(None)
    return Comparison(base, arm.mean - base.mean, welch(arm.values, base.values))


def compare(df: pd.DataFrame, metric: str = "final.test_acc",
            baseline: Mapping[str, object] | None = None,
            by: list[str] | None = None) -> pd.DataFrame:
    """Each non-baseline arm vs its baseline: the arm equal to it in every identity key
    except the ablated one (:func:`maxup.analysis.arms.baseline_of`; nothing is pooled).

    Args:
        df: a records frame (only completed rows are used; each trial once).
        metric: the column compared.
        baseline: ``{ablated column: baseline value}``, one entry; default
            ``{"config.maxup.m": 1}``.
        by: the arm columns shown (default :func:`arm_columns`).

    Returns:
        one row per non-baseline arm whose baseline arm exists: the ``by`` columns, ``n,
        mean, std, base_n, base_mean, base_std, diff`` (arm mean - baseline mean) and
        ``p_value`` (Welch's unequal-variance t-test, NaN when either arm has n < 2 or both
        arms have zero variance), ``arm_id`` and ``base_arm_id``.
    """
    (key, value), = dict(baseline or {"config.maxup.m": 1}).items()
    done = unique_trials(completed(df))
    keys = list(arm_columns(done) if by is None else by)
    arms = arms_of(done, metric)
    pool = {a.arm_id: a for a in arms}
    first = first_of_arm(done)
    rows = []
    for arm in arms:
        cmp = baseline_of(arm, key.removeprefix("config."), value, pool)
        if cmp is None or not cmp.found:
            continue
        src = first.loc[arm.arm_id]
        row = {k: _norm(src[k]) if k in src else None for k in keys}
        a, b = arm.stats, cmp.base.stats
        row.update({"n": a["n"], "mean": a["mean"], "std": a["std"], "base_n": b["n"],
                    "base_mean": b["mean"], "base_std": b["std"], "diff": cmp.diff,
                    "p_value": cmp.p_value, "arm_id": arm.arm_id,
                    "base_arm_id": cmp.base.arm_id})
        rows.append(row)
    rows.sort(key=lambda r: _sort_key(tuple(r[k] for k in keys)))
    return pd.DataFrame(rows, columns=[*keys, "n", "mean", "std", "base_n", "base_mean",
                                       "base_std", "diff", "p_value", "arm_id", "base_arm_id"])
