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

:func:`against` compares an arm with one :class:`Baseline`: the arm equal to it in every key
except the ablated one and the baseline's further keys (:func:`maxup.identity.counterpart_of`);
nothing is pooled. A MaxUp arm has its counterpart at m = 1 (:data:`REFERENCE`); a language
model's also has the per-sequence m = 1 control (:data:`CONTROL`). The test is the paired
t-test over the seeds both arms finished when they share at least two (a seed fixes the
initialisation, the data subset and order, and a language model's BPTT window lengths, whatever
the arm), else Welch's (:func:`difference`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from maxup import identity, store
from maxup.analysis.load import completed, unique_trials
from maxup.analysis.stats import (
    PAIRED,
    Difference,
    _norm,
    _sort_key,
    arm_columns,
    compare_seeds,
    describe,
    welch_difference,
)
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
        seeds: the seed of each value, in the same order (empty: seeds unknown, no pairing).
        n_failed, n_diverged, n_running, n_corrupt, n_pending, n_planned: the seed counts.
    """

    arm_id: str
    config: dict
    values: np.ndarray
    seeds: tuple = ()
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

    def by_seed(self) -> dict:
        """seed -> value of the finished seeds whose seed is known (for pairing)."""
        return {s: float(v) for s, v in zip(self.seeds, self.values) if s is not None}


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
    keep = np.isfinite(finite)
    seed_col = done["seed"] if "seed" in done else pd.Series(None, index=done.index)
    seeds = tuple(_norm(s) for s in seed_col.to_numpy(dtype=object)[keep])
    finite = finite[keep] * scale
    failed = rows[status == Status.FAILED]
    diverged_fail = int(_is_diverged_failure(failed).sum())
    recorded = rows[~status.isin((store.PENDING, store.CORRUPT))]
    return ArmStats(arm_id=arm, config=_config_of((recorded if len(recorded) else rows).iloc[0]),
                    values=finite, seeds=seeds, n_failed=len(failed) - diverged_fail,
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
class Baseline:
    """What an arm is compared with: the arm equal to it in every key except the ablated
    ``key`` = ``value`` and the further keys ``also`` (:func:`maxup.identity.counterpart_of`).

    Args:
        key: the ablated dotted config key (``"maxup.m"``); an arm holding ``value`` is itself
            a baseline and is not compared.
        value: the baseline's value of it (``1``).
        also: further ``(dotted key, value)`` pairs set in the counterpart
            (``(("lm.mask_per_sequence", True),)``: the per-sequence control).
        label: how tables and the report name it (``"m = 1"``).
        section: a config section an arm must have for the comparison to apply (``"lm"``:
            only a language model has the control); None: every arm.
    """

    key: str
    value: object
    also: tuple[tuple[str, object], ...] = ()
    label: str = ""
    section: str | None = None

    @property
    def changes(self) -> dict:
        """``{dotted key: value}`` of the counterpart: the ablated key first, then ``also``."""
        return {self.key: self.value, **dict(self.also)}

    def name(self) -> str:
        """Its label, else ``key = value``."""
        return self.label or f"{self.key} = {self.value}"

    def applies(self, config: dict) -> bool:
        """Whether an arm of this config is compared with this baseline at all."""
        return self.section is None or isinstance(config.get(self.section), dict)


#: A MaxUp arm's reference: its counterpart at m = 1 (for a language model: awd-lstm-lm's
#: step, one word-dropout mask for the batch).
REFERENCE = Baseline("maxup.m", 1, label="m = 1")
#: A language-model MaxUp arm's clean control (issue 29): m = 1 with one word-dropout mask per
#: sequence, drawn as MaxUp's copies are, so the arm differs from it only in the max.
CONTROL = Baseline("maxup.m", 1, (("lm.mask_per_sequence", True),),
                   label="control (m = 1, per-sequence masks)", section="lm")


def baselines(key: str, value) -> list[Baseline]:
    """The baselines of a table whose ablation is ``key`` = ``value``: the counterpart at that
    value and, for the MaxUp ablation, the language model's per-sequence control.

    Args:
        key: the ablated dotted key.
        value: its baseline value.
    """
    if (key, value) == (REFERENCE.key, REFERENCE.value):
        return [REFERENCE, CONTROL]
    return [Baseline(key, value)]


@dataclass(frozen=True)
class Comparison:
    """An arm against its baseline (:func:`difference`).

    Args:
        base: the baseline arm (None: no arm matches, none pooled).
        diff: paired: the mean over common seeds of (arm − baseline); Welch: arm mean −
            baseline mean.
        p_value: the test's two-sided p (NaN where undefined).
        test: :data:`~maxup.analysis.stats.PAIRED` or :data:`~maxup.analysis.stats.WELCH`.
        ci_low: lower bound of the 95 % t-interval of ``diff`` (NaN where undefined).
        ci_high: upper bound.
        n_pairs: seeds paired (0 for Welch).
        undefined: why there is no p-value (empty when there is one).
        baseline: which baseline this is.
        detectable: the smallest |diff| the test detects with 80 % power at the spread
            observed (:attr:`~maxup.analysis.stats.Difference.detectable`; NaN where
            undefined).
    """

    base: ArmStats | None
    diff: float = math.nan
    p_value: float = math.nan
    test: str = ""
    ci_low: float = math.nan
    ci_high: float = math.nan
    n_pairs: int = 0
    undefined: str = ""
    baseline: Baseline | None = None
    detectable: float = math.nan

    @property
    def found(self) -> bool:
        return self.base is not None

    def test_text(self) -> str:
        """``"paired t-test, 5 seeds"`` or ``"Welch"``: the test behind ``p_value``."""
        if self.test == PAIRED:
            return f"paired t-test, {self.n_pairs} seed{'s' if self.n_pairs != 1 else ''}"
        return self.test


def difference(arm: ArmStats, base: ArmStats) -> Difference:
    """``arm`` against ``base``: the paired t-test over the seeds both finished when there are
    at least :data:`~maxup.analysis.stats.MIN_PAIRS` (same seed: same initialisation, data
    subset and order, and a language model's BPTT window lengths), else Welch's test on all
    their seeds (:func:`maxup.analysis.stats.compare_seeds`).

    Args:
        arm: the compared arm.
        base: its baseline.
    """
    a, b = arm.by_seed(), base.by_seed()
    if len(a) == arm.n and len(b) == base.n:
        return compare_seeds(a, b)
    return welch_difference(arm.values, base.values)  # a seed unknown: nothing to pair


def against(arm: ArmStats, baseline: Baseline, pool: dict[str, ArmStats]) -> Comparison | None:
    """The arm's comparison with one baseline: the arm equal to it except the baseline's keys.

    Args:
        arm: the arm.
        baseline: which counterpart (:data:`REFERENCE`, :data:`CONTROL`, ...).
        pool: arm id -> statistics of every arm the baseline may be.

    Returns:
        None when ``arm`` holds the baseline's value of its ablated key (it is a baseline
        itself) or the baseline does not apply to it; a :class:`Comparison` with
        ``base=None`` when no matching baseline arm exists (never a pooled one).
    """
    if config_value(arm.config, baseline.key) == baseline.value or \
            not baseline.applies(arm.config):
        return None
    base = pool.get(identity.counterpart_of(arm.config, baseline.changes))
    if base is None or base.n == 0:
        return Comparison(None, baseline=baseline)
    d = difference(arm, base)
    return Comparison(base, d.diff, d.p_value, d.test, d.ci_low, d.ci_high, d.n_pairs,
                      d.undefined, baseline, d.detectable)


def baseline_of(arm: ArmStats, key: str, value, pool: dict[str, ArmStats]) -> Comparison | None:
    """The arm's comparison with its baseline: the arm equal to it except ``key`` = ``value``
    (:func:`against` with ``Baseline(key, value)``).

    Args:
        arm: the arm.
        key: the ablated dotted config key (``"maxup.m"``).
        value: the baseline's value of it (``1``).
        pool: arm id -> statistics of every arm the baseline may be.
    """
    label = REFERENCE.label if (key, value) == (REFERENCE.key, REFERENCE.value) else ""
    return against(arm, Baseline(key, value, label=label), pool)


#: The columns of :func:`compare` after the arm columns.
COMPARE_COLUMNS = ("n", "mean", "std", "base_n", "base_mean", "base_std", "diff",
                   "diff_ci_low", "diff_ci_high", "p_value", "test", "n_pairs", "undefined",
                   "detectable", "arm_id", "base_arm_id")


def compare(df: pd.DataFrame, metric: str = "final.test_acc",
            baseline: Mapping[str, object] | Baseline | None = None,
            by: list[str] | None = None) -> pd.DataFrame:
    """Each non-baseline arm vs its baseline: the arm equal to it in every identity key
    except the ablated one (:func:`against`; nothing is pooled).

    Args:
        df: a records frame (only completed rows are used; each trial once).
        metric: the column compared.
        baseline: ``{ablated column: baseline value}``, one entry, or a :class:`Baseline`
            (:data:`CONTROL`: each language-model arm vs its per-sequence m = 1 control);
            default ``{"config.maxup.m": 1}``.
        by: the arm columns shown (default :func:`arm_columns`).

    Returns:
        one row per non-baseline arm whose baseline arm exists: the ``by`` columns, ``n,
        mean, std, base_n, base_mean, base_std``, ``diff`` with its 95 % t-interval
        ``diff_ci_low, diff_ci_high``, ``p_value`` and ``test``: the paired t-test over the
        seeds both arms finished (``n_pairs`` of them; ``diff`` is the mean of the per-seed
        differences) when they share at least two, else Welch's unequal-variance test
        (``n_pairs`` 0; ``diff`` = arm mean − baseline mean); p and CI are NaN where the test
        is undefined (fewer than 2 seeds a side, or no variance), ``undefined`` says why
        (empty otherwise); ``detectable``: the smallest |diff| that test detects with 80 %
        power at the spread observed (NaN where undefined); ``arm_id``, ``base_arm_id``.
    """
    if not isinstance(baseline, Baseline):
        (key, value), = dict(baseline or {"config.maxup.m": 1}).items()
        baseline = Baseline(key.removeprefix("config."), value)
    done = unique_trials(completed(df))
    keys = list(arm_columns(done) if by is None else by)
    arms = arms_of(done, metric)
    pool = {a.arm_id: a for a in arms}
    first = first_of_arm(done)
    rows = []
    for arm in arms:
        cmp = against(arm, baseline, pool)
        if cmp is None or not cmp.found:
            continue
        src = first.loc[arm.arm_id]
        row = {k: _norm(src[k]) if k in src else None for k in keys}
        a, b = arm.stats, cmp.base.stats
        row.update({"n": a["n"], "mean": a["mean"], "std": a["std"], "base_n": b["n"],
                    "base_mean": b["mean"], "base_std": b["std"], "diff": cmp.diff,
                    "diff_ci_low": cmp.ci_low, "diff_ci_high": cmp.ci_high,
                    "p_value": cmp.p_value, "test": cmp.test, "n_pairs": cmp.n_pairs,
                    "undefined": cmp.undefined, "detectable": cmp.detectable,
                    "arm_id": arm.arm_id,
                    "base_arm_id": cmp.base.arm_id})
        rows.append(row)
    rows.sort(key=lambda r: _sort_key(tuple(r[k] for k in keys)))
    return pd.DataFrame(rows, columns=[*keys, *COMPARE_COLUMNS])
