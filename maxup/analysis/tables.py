"""Regenerate the paper's tables (and a generic per-sweep table) and render them.

:func:`build_table` fills a :class:`~maxup.analysis.specs.TableSpec` from records;
:func:`sweep_table` summarises any sweep; :func:`render` prints a :class:`Table` as Markdown
(default), LaTeX (booktabs) or CSV (tidy: one line per cell, full precision).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from maxup import records
from maxup.analysis.arms import (
    CONTROL,
    MIN_SEEDS,
    REFERENCE,
    ArmStats,
    Baseline,
    Comparison,
    against,
    arm_stats,
    arms_of,
    baselines,
    config_value,
    first_of_arm,
)
from maxup.analysis.certified import Setting, best_at, images_of, setting_label
from maxup.analysis.certified import settings as certified_settings
from maxup.analysis.load import completed, unique_trials
from maxup.analysis.published import PUBLISHED, Published
from maxup.analysis.published import published as lookup_published
from maxup.analysis.specs import METHOD, METRIC, RADIUS, SPECS, TableSpec
from maxup.analysis.stats import (
    ALPHA,
    NO_ARM_VARIANCE,
    NO_PAIR_VARIANCE,
    PAIRED,
    _sort_key,
    arm_columns,
    compare_seeds,
)
from maxup.errors import UsageError

FORMATS = ("md", "latex", "csv")
MISSING = "—"
#: Marks a cell with fewer than MIN_SEEDS finished seeds.
FEW = "†"
NAN = math.nan


@dataclass
class Cell:
    """One table cell.

    Args:
        mean: the value (mean over seeds; the envelope maximum; a difference; a p-value).
        std: sample std over seeds (NaN when n < 2 or not a mean).
        n: observations behind the value: finished seeds with a finite value (0: none).
        ci_low: lower 95% Student-t bound of the mean (NaN when n < 2).
        ci_high: upper bound.
        published: the paper's value for this cell, when ours is comparable with it.
        note: why the cell is what it is.
        n_failed, n_diverged, n_running, n_corrupt, n_pending, n_planned: the arm's other
            seeds (:mod:`maxup.analysis.arms`); never part of the mean, always shown.
        arms: when several arms fall into the cell, each of them (shown side by side, none
            chosen); empty otherwise.
        comparison: the arm against its baseline (None for a baseline arm or no ablation).
        control: a language-model arm against its per-sequence m = 1 control
            (:data:`~maxup.analysis.arms.CONTROL`; None where that does not apply).
        text: a fixed text shown instead of a number (``"no baseline"``).
        not_comparable: why the published value is withheld (empty when it is shown).
        values: the observations behind ``mean``, seed -> value (what bold is tested on;
            keys that are not seeds never pair).
        setting: the setting an envelope cell's value comes from (``σ = 0.25, m = 4``).
    """

    mean: float = NAN
    std: float = NAN
    n: int = 0
    ci_low: float = NAN
    ci_high: float = NAN
    published: Published | None = None
    note: str = ""
    n_failed: int = 0
    n_diverged: int = 0
    n_running: int = 0
    n_planned: int = 0
    n_corrupt: int = 0
    n_pending: int = 0
    arms: list[ArmStats] = field(default_factory=list)
    comparison: Comparison | None = None
    control: Comparison | None = None
    text: str = ""
    not_comparable: str = ""
    values: dict = field(default_factory=dict)
    setting: str = ""

    @classmethod
    def of_arm(cls, arm: ArmStats) -> Cell:
        """The cell of one arm: its statistics, seed counts and per-seed values."""
        d = arm.stats
        keys = arm.seeds if len(arm.seeds) == len(arm.values) else \
            [(arm.arm_id, i) for i in range(len(arm.values))]  # seeds unknown: never paired
        return cls(d["mean"], d["std"], d["n"], d["ci_low"], d["ci_high"],
                   n_failed=arm.n_failed, n_diverged=arm.n_diverged, n_running=arm.n_running,
                   n_planned=arm.n_planned, n_corrupt=arm.n_corrupt, n_pending=arm.n_pending,
                   values={k: float(v) for k, v in zip(keys, arm.values, strict=True)})

    @property
    def missing(self) -> bool:
        return not self.arms and not self.text and (self.n == 0 or not math.isfinite(self.mean))

    @property
    def delta(self) -> float:
        """Reproduced minus published (NaN without both)."""
        if self.missing or self.arms or self.published is None:
            return NAN
        return self.mean - self.published.value

    @property
    def inside_ci(self) -> bool | None:
        """Whether the published value lies in the reproduced 95% CI (None if undefined or
        fewer than :data:`~maxup.analysis.arms.MIN_SEEDS` finished seeds)."""
        if self.published is None or self.n < MIN_SEEDS or not math.isfinite(self.ci_low):
            return None
        return bool(self.ci_low <= self.published.value <= self.ci_high)

    @property
    def others(self) -> int:
        """Seeds of the cell outside its mean: diverged, failed, running, corrupt, not run."""
        return (self.n_diverged + self.n_failed + self.n_running + self.n_corrupt
                + self.n_pending)

    def counts_text(self) -> str:
        """``"n = 4; 1 diverged, 1 failed, 1 corrupt"``: the finished seeds and every other
        one (``not run``: planned, no record yet)."""
        parts = [f"{k} {w}" for k, w in ((self.n_diverged, "diverged"),
                                         (self.n_failed, "failed"),
                                         (self.n_running, "running"),
                                         (self.n_corrupt, "corrupt"),
                                         (self.n_pending, "not run")) if k]
        return f"n = {self.n}" + ("; " + ", ".join(parts) if parts else "")


@dataclass
class Column:
    """A table column: its label, its key, and how its cells print.

    Args:
        label: header text.
        key: the axis value (method key, model name, metric, radius) or a name.
        kind: ``"stat"`` (mean ± std (n)), ``"value"`` (one number (n)), ``"delta"``
            (signed), ``"p"`` (p-value), ``"n"`` (the cell's seed counts) or ``"ci"`` (its
            95% t-interval).
        rank: whether the best cell of the column is bolded.
        lower_is_better: which end is best.
    """

    label: str
    key: object = None
    kind: str = "stat"
    rank: bool = True
    lower_is_better: bool = False


@dataclass
class Table:
    """A regenerated table, ready for :func:`render`."""

    id: str
    title: str
    row_header: str
    rows: list[tuple[object, str]]
    columns: list[Column]
    cells: dict[tuple[int, int], Cell]
    digits: int = 2
    expected_n: int | None = None
    notes: list[str] = field(default_factory=list)
    n_records: int = 0
    sweep: str = ""
    paper: bool = False
    dataset: str = ""  # the dataset(s) of its records ("+"-joined when a sweep has several)

    def cell(self, row: int, col: int) -> Cell:
        """The cell at (row index, column index); an empty (missing) cell when absent."""
        return self.cells.get((row, col)) or Cell()

    def missing(self) -> list[tuple[str, str]]:
        """``(row label, column label)`` of every stat/value cell without data."""
        return [(rl, c.label) for i, (_, rl) in enumerate(self.rows)
                for j, c in enumerate(self.columns)
                if c.kind in ("stat", "value") and self.cell(i, j).missing]

    def best(self, col: int) -> set[int]:
        """The row of column ``col`` to bold: the one best value, when it is better than
        every other ranked cell of the column by :func:`significantly_better` (ties, a column
        of one cell, too few seeds or a difference chance explains: none). Cells holding
        several arms never rank."""
        c = self.columns[col]
        if not c.rank:
            return set()
        cells = {i: self.cell(i, col) for i in range(len(self.rows))
                 if not self.cell(i, col).missing and not self.cell(i, col).arms}
        if len(cells) < 2:
            return set()
        target = (min if c.lower_is_better else max)(x.mean for x in cells.values())
        (win, *tied) = [i for i, x in cells.items() if x.mean == target]
        if tied or not all(significantly_better(cells[win], x, c.lower_is_better)
                           for i, x in cells.items() if i != win):
            return set()
        return {win}


#: The level at which a best cell is bolded (the verdicts' level).
BOLD_ALPHA = ALPHA
#: What the bold means, said under every table that can bold.
BOLD_NOTE = (f"bold: the best value of its column, better than every other row's by a t-test "
             f"at p < {BOLD_ALPHA:g} (paired by seed where they share >= 2 seeds, else Welch); "
             f"a column without one has none")


def significantly_better(a: Cell, b: Cell, lower_is_better: bool = False) -> bool:
    """Whether cell ``a``'s observations beat ``b``'s beyond chance: a two-sided t-test
    (:func:`~maxup.analysis.stats.compare_seeds`: paired by seed, else Welch) at p <
    :data:`BOLD_ALPHA`, in the right direction. Differences that are identical over every
    pair (or constant arms) count when they point the right way (the t statistic is
    infinite); fewer than 2 observations a side never do."""
    d = compare_seeds(a.values, b.values)
    if not math.isfinite(d.diff) or d.diff == 0 or (d.diff < 0) != lower_is_better:
        return False
    if math.isfinite(d.p_value):
        return d.p_value < BOLD_ALPHA
    return d.undefined in (NO_PAIR_VARIANCE, NO_ARM_VARIANCE)


# ----------------------------------------------------------------------------------- building
#: The record column of the language model's per-sequence control (:data:`CONTROL`).
_CONTROL_COLUMN = "config.lm.mask_per_sequence"


def _method_series(df: pd.DataFrame, baseline: dict) -> pd.Series:
    """``"baseline"``, ``"control"`` (a baseline with per-sequence word-dropout masks, the
    language model's control) or ``"maxup"`` per row."""
    is_base = pd.Series(True, index=df.index)
    for k, v in baseline.items():
        col = df[k] if k in df else pd.Series(np.nan, index=df.index)
        is_base &= (col == v).fillna(False).astype(bool)
    per_seq = df[_CONTROL_COLUMN] if _CONTROL_COLUMN in df else pd.Series(
        False, index=df.index)
    is_control = is_base & per_seq.map(lambda v: v is True).astype(bool)
    return pd.Series(np.where(is_control, "control", np.where(is_base, "baseline", "maxup")),
                     index=df.index, dtype=object)


def _key_series(df: pd.DataFrame, key: str, spec: TableSpec) -> pd.Series:
    if key == METHOD:
        if spec.ablation is None:
            raise UsageError(f"table {spec.id}: a 'method' axis needs an ablation (the "
                             "baseline key and value); allowed: TableSpec(ablation=(key, "
                             "value))")
        return _method_series(df, spec.baseline)
    if key in df:
        return df[key].astype(object)
    return pd.Series(None, index=df.index, dtype=object)


def _norm(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        v = float(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _axis_values(axis, present) -> list[tuple[object, str]]:
    declared = [v for v, _ in axis.values]
    out = [(v, axis.label(v)) for v in declared]
    if axis.extra:
        extra = sorted({p for p in present if p is not None and p not in declared},
                       key=lambda x: (not isinstance(x, (int, float)), str(x) if not
                                      isinstance(x, (int, float)) else x))
        out += [(v, axis.label(v)) for v in extra]
    return out


def _mismatch(rows: pd.DataFrame, protocol: dict) -> str:
    """The first protocol key some row's config breaks, as ``key = ours (paper: theirs)``."""
    for key, want in protocol.items():
        for cfg in rows["run_config"] if "run_config" in rows else []:
            got = config_value(cfg, key) if isinstance(cfg, dict) else None
            if got != want:
                return (f"{key} = {_fmt_key(got)} (paper: "
                        f"{'full' if want is None else _fmt_key(want)})")
    return ""


def _arm_label(first: pd.Series, columns: list[str]) -> str:
    """``"m=4, optim.lr=0.1"``: an arm's values of ``columns`` (its first row ``first``)."""
    return ", ".join(f"{_short(c)}={_fmt_key(first[c])}" for c in columns)


class _Pool:
    """Every arm of the loaded frame per metric: where a cell's baseline is looked up."""

    def __init__(self, frame: pd.DataFrame, scale: float = 1.0):
        self.frame, self.scale, self._by = frame, scale, {}

    def __call__(self, metric: str) -> dict[str, ArmStats]:
        if metric not in self._by:
            self._by[metric] = {a.arm_id: a for a in arms_of(self.frame, metric, self.scale)}
        return self._by[metric]


def _baselines(ablation) -> list[Baseline]:
    return [] if ablation is None else baselines(ablation[0], ablation[1])


def _changes_text(baseline: Baseline) -> str:
    return ", ".join(f"{k} = {_fmt_key(v)}" for k, v in baseline.changes.items())


def _ci_text(cmp: Comparison, digits: int) -> str:
    if not (math.isfinite(cmp.ci_low) and math.isfinite(cmp.ci_high)):
        return ""
    return f" [{cmp.ci_low:+.{digits}f}, {cmp.ci_high:+.{digits}f}]"


def p_text(cmp: Comparison) -> str:
    """``"p = 0.12 (paired t-test, 5 seeds)"``, ``"p = 0.12 (Welch)"`` or ``"p n/a (why)"``."""
    if not math.isfinite(cmp.p_value):
        return f"p n/a ({cmp.test_text()}: {cmp.undefined or 'undefined'})"
    return f"p = {cmp.p_value:.3g} ({cmp.test_text()})"


def _comparison_note(where: str, cmp: Comparison, digits: int) -> str:
    baseline = cmp.baseline or REFERENCE
    if not cmp.found:
        what = "baseline" if baseline is not CONTROL else "control"
        return (f"{where}: no {what} (no arm with {_changes_text(baseline)} equal to it in "
                "every other key)")
    return (f"{where}: Δ {cmp.diff:+.{digits}f}{_ci_text(cmp, digits)} vs its "
            f"{baseline.name()} arm (n = {cmp.base.n}), {p_text(cmp)}")


def _mean_cell(csub: pd.DataFrame, metric: str, spec: TableSpec, pool: _Pool, where: str,
               notes: list[str]) -> Cell:
    """The cell of the arm(s) in ``csub``: one arm -> its statistics and its comparison with
    its baseline; several -> each shown, none chosen."""
    arms = arms_of(csub, metric, spec.scale)
    if not arms:
        return Cell()
    if len(arms) > 1:
        cols = arm_columns(unique_trials(csub))
        first = first_of_arm(csub)
        labels = [_arm_label(first.loc[a.arm_id], cols) or a.arm_id for a in arms]
        notes.append(f"{where} holds {len(arms)} arms, shown in this order (none chosen): "
                     + "; ".join(labels))
        return Cell(arms=arms, n=sum(a.n for a in arms))
    cell = Cell.of_arm(arms[0])
    for baseline in _baselines(spec.ablation):
        cmp = against(arms[0], baseline, pool(metric))
        if baseline is CONTROL:
            cell.control = cmp
        else:
            cell.comparison = cmp
        if cmp is not None and cell.n:
            notes.append(_comparison_note(where, cmp, spec.digits))
            if cmp.found or TEST_NOTE in notes:  # once, after every comparison's note
                if TEST_NOTE in notes:
                    notes.remove(TEST_NOTE)
                notes.append(TEST_NOTE)
    return cell


def _envelope_cell(found: list[Setting], radius: float, scale: float) -> Cell:
    """The best setting's mean certified accuracy at ``radius`` over its models (n: its
    models), the setting named; its models' values are what bold is tested on."""
    best = best_at(found, radius)
    if best is None:
        return Cell()
    setting, vals = best
    v = np.asarray(list(vals.values())) * scale
    return Cell(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else NAN, n=int(v.size),
                values={k: float(x) * scale for k, x in vals.items()},
                # a radius no setting certifies any image at is nobody's
                setting=setting_label(setting, found) if len(found) > 1 and v.any() else "")


def _envelope_note(sub: pd.DataFrame) -> str:
    """What Table 8's cells are, with the images and models behind them."""
    found = certified_settings(sub)
    models = sum(len(s.models) for s in found)
    images = sorted({n for s in found for c in s.models.values()
                     if (n := images_of(c)) is not None})
    protocol = sorted({(c.get("n"), c.get("alpha")) for s in found for c in s.models.values()
                       if c.get("n") is not None})
    per = (f"{images[0]:,} test images" if len(images) == 1 else
           f"{images[0]:,}-{images[-1]:,} test images" if images else "test images")
    cert = "; ".join(f"N = {n:,}, α = {a:g}" for n, a in protocol)
    return (f"each cell: the best setting's mean certified accuracy over its trained models "
            f"(each setting one σ and one configuration, e.g. m; the envelope over settings "
            f"of per-setting means, Salman et al. 2019), the setting named; n: its models. "
            f"{models} certified models in {len(found)} settings, each model on {per}"
            + (f" ({cert})" if cert else ""))


def _datasets(df: pd.DataFrame) -> list[str]:
    col = df["config.data.name"] if "config.data.name" in df else pd.Series(dtype=object)
    return sorted({str(v) for v in col.dropna().unique()})


def build_table(df: pd.DataFrame, spec: TableSpec | str, vs_paper: bool = False,
                dataset: str | None = None) -> Table:
    """Regenerate one paper table from records.

    Every arm of a cell counts each of its trials once, whichever sweeps planned it; failed,
    diverged, running, corrupt and not-run seeds are counted against their arm, never in its
    mean. A table reads one dataset's records only: ``dataset``, by default the paper's when
    present, else the first present; another dataset's table (records that name the paper
    table but trained on another dataset) is labelled as such and has no published values,
    so a paper cell never mixes datasets.

    Args:
        df: a frame from :func:`maxup.analysis.load_records` (any statuses).
        spec: a :class:`TableSpec` or a table id (``"3"``).
        vs_paper: kept for symmetry with :func:`render`; published values are attached to
            the cells whose records match the paper's setting (``spec.protocol``).
        dataset: the dataset of an envelope table (see above).
    """
    if isinstance(spec, str):
        if spec not in SPECS:
            raise UsageError(f"--table: got {spec!r}; allowed: {', '.join(SPECS)}, sweep")
        spec = SPECS[spec]
    frame = df
    sub = df[spec.filter(df).fillna(False).astype(bool)] if len(df) else df
    title = f"Table {spec.id}: {spec.title}"
    foreign = False
    present = _datasets(completed(sub) if spec.kind == "envelope" else sub)
    if dataset is None:
        dataset = spec.dataset if spec.dataset in present else (present or [None])[0]
    if dataset is not None and "config.data.name" in sub:
        sub = sub[sub["config.data.name"] == dataset]
    foreign = dataset is not None and spec.dataset is not None and dataset != spec.dataset
    if foreign:
        title += (f" — {dataset}, not the paper's {spec.dataset}: no published values")
    rkeys = _key_series(sub, spec.rows.key, spec).map(_norm)
    if spec.cols.key in (METRIC, RADIUS):
        ckeys = None
        present_cols: list = []
    else:
        ckeys = _key_series(sub, spec.cols.key, spec).map(_norm)
        present_cols = list(ckeys.dropna().unique())
    rows = _axis_values(spec.rows, rkeys.dropna().unique())
    cols_axis = _axis_values(spec.cols, present_cols)
    columns = [Column(label, key, kind="value" if spec.kind == "envelope" else "stat",
                      lower_is_better=spec.lower_is_better) for key, label in cols_axis]
    table = Table(spec.id, title, spec.rows.title or "", rows, columns, {}, digits=spec.digits,
                  expected_n=spec.expected_n, n_records=len(unique_trials(completed(sub))),
                  paper=not foreign, dataset=dataset or "")
    notes: list[str] = []
    withheld: list[str] = []
    pool = _Pool(frame, spec.scale)
    row_groups = {k: idx for k, idx in sub.groupby(rkeys, dropna=True).groups.items()}
    for i, (rv, rlabel) in enumerate(rows):
        idx = row_groups.get(rv)
        rsub = sub.loc[idx] if idx is not None else sub.iloc[0:0]
        # An envelope's columns are radii: one set of certifications serves the whole row.
        found = certified_settings(rsub) if spec.kind == "envelope" else []
        for j, (cv, clabel) in enumerate(cols_axis):
            csub = rsub if ckeys is None else rsub[ckeys.loc[rsub.index] == cv]
            if spec.kind == "envelope":
                cell = _envelope_cell(found, float(cv), spec.scale)
            else:
                metric = cv if spec.cols.key == METRIC else spec.metric
                cell = _mean_cell(csub, metric, spec, pool, f"{rlabel} / {clabel}", notes)
            published = None if foreign else lookup_published(spec.id, rv, cv)
            if published is not None and not cell.missing:
                reason = _mismatch(completed(csub), spec.protocol_for(rv))
                if reason:
                    cell.not_comparable = reason
                    withheld.append(reason)
                    published = None
            cell.published = published
            table.cells[(i, j)] = cell
    if withheld:
        reasons = list(dict.fromkeys(withheld))
        notes.append("published values not comparable, not shown: " + "; ".join(reasons))
    if spec.kind == "envelope":
        notes.append(_envelope_note(sub))
        notes += _uncertified_notes(frame, spec, dataset, rows)
    elif any(0 < table.cell(i, j).n < MIN_SEEDS for i in range(len(rows))
             for j in range(len(columns))):
        notes.append(f"{FEW} fewer than {MIN_SEEDS} finished seeds")
    table.notes = notes
    return _with_bold_note(table)



def _uncertified_notes(frame: pd.DataFrame, spec: TableSpec, dataset: str | None,
                       rows: list[tuple[object, str]]) -> list[str]:
    """Per method row: the trained models a sweep asked to certify that hold no certification
    yet (not in the row's n), so a missing model never just lowers n."""
    col = "config.certify.enabled"
    if col not in frame or not len(frame):
        return []
    asked = frame[col].map(lambda v: v is True or v == 1).astype(bool)
    want = frame[asked & (frame["status"] == records.Status.COMPLETED)]
    if dataset is not None and "config.data.name" in want:
        want = want[want["config.data.name"] == dataset]
    want = unique_trials(want[~spec.filter(want).fillna(False).astype(bool)])
    if not len(want):
        return []
    keys = _key_series(want, spec.rows.key, spec).map(_norm)
    out = []
    for value, label in rows:
        k = int((keys == value).sum())
        if k:
            out.append(f"{label}: {k} trained model{'s' if k != 1 else ''} not certified yet "
                       "(not in n)")
    return out


def _short(col: str) -> str:
    name = col.removeprefix("config.")
    return "m" if name == "maxup.m" else name


def _fmt_key(v) -> str:
    v = _norm(v)
    return "null" if v is None else str(v)


def _sweep_metric(df: pd.DataFrame) -> tuple[str, str, bool]:
    for metric, best, lower in (("final.test_acc", "best.test_acc", False),
                                ("final.test_ppl", "best.test_ppl", True)):
        if metric in df and pd.to_numeric(df[metric], errors="coerce").notna().any():
            return metric, best, lower
    return "final.test_acc", "best.test_acc", False


def sweep_table(df: pd.DataFrame, sweep: str | None = None, expected_n: int = 5,
                frame: pd.DataFrame | None = None) -> Table:
    """The generic table of one sweep: one row per arm (every varying config column but the
    seed), final metric mean ± std (n), best-epoch metric, the seed counts, and Δ / Welch p
    against the arm's own m = 1 arm (equal to it in every other key; "no baseline" when the
    records hold none).

    Args:
        df: records (of one sweep, or pass ``sweep`` to select it).
        sweep: sweep name to select (None: use all of ``df``).
        expected_n: seeds per arm below which a cell is marked.
        frame: the whole loaded frame, where baselines and planned trials are looked up
            (default ``df``).
    """
    frame = df if frame is None else frame
    if sweep is not None and "sweep" in df:
        df = df[df["sweep"] == sweep]
    metric, best_metric, lower = _sweep_metric(df)
    arms = arms_of(df, metric)
    cols = arm_columns(_labelled(unique_trials(df)))
    first = first_of_arm(df)
    arms.sort(key=lambda a: _sort_key(tuple(_norm(first.loc[a.arm_id, c]) for c in cols)))
    ms = {a.arm_id: config_value(a.config, "maxup.m") for a in arms}
    has_m = 1 in ms.values() and any(v not in (None, 1) for v in ms.values())
    pool = _Pool(frame)(metric) if has_m else {}
    name = metric.split(".", 1)[1]
    unit = "%" if metric.endswith("acc") else "ppl"
    # "best": the epoch a record's best holds. A language model's is chosen on validation
    # (its test value at the lowest validation perplexity); an image task has no validation
    # split, so its best epoch is chosen on the test set itself: optimistic, labelled so and
    # never bolded. Either way over the same seeds as "final".
    best_label = (f"{name} at best-val epoch ({unit})" if lower
                  else f"best {name}, optimistic ({unit})")
    columns = [Column(f"final {name} ({unit})", metric, lower_is_better=lower),
               Column(best_label, best_metric, rank=False, lower_is_better=lower),
               Column("n", "n", kind="n", rank=False),
               Column("95% CI (final)", "ci", kind="ci", rank=False)]
    versus = {b: [against(a, b, pool) for a in arms] for b in (REFERENCE, CONTROL)} \
        if has_m else {}
    # The control's columns appear where some arm has its control among the records.
    with_control = any(c is not None and c.found for c in versus.get(CONTROL, []))
    if has_m:
        columns += [Column("Δ vs m=1", "diff", kind="delta", rank=False),
                    Column("p vs m=1", "p_value", kind="p", rank=False)]
    if with_control:
        columns += [Column("Δ vs control", "control_diff", kind="delta", rank=False),
                    Column("p vs control", "control_p_value", kind="p", rank=False)]
    rows, cells = [], {}
    for i, arm in enumerate(arms):
        row = first.loc[arm.arm_id]
        rows.append((tuple(_norm(row[c]) for c in cols), _arm_label(row, cols) or "all"))
        cells[(i, 0)] = cells[(i, 2)] = cells[(i, 3)] = Cell.of_arm(arm)
        arm_rows = df[df["arm_id"] == arm.arm_id]
        cells[(i, 1)] = Cell.of_arm(arm_stats(arm_rows, best_metric, same_seeds_as=metric))
        if has_m:
            _comparison_cells(cells, i, 4, arm, versus[REFERENCE][i], "baseline")
        if with_control:
            own = "control" if arm.config and _is_control(arm.config) else ""
            _comparison_cells(cells, i, 6, arm, versus[CONTROL][i], own)
    label = "(single runs)" if sweep is None and df.get("sweep") is not None and \
        df["sweep"].isna().all() else (sweep or _only_sweep(df))
    notes = []
    if not cols:
        notes.append("no config column varies: one arm")
    if has_m:
        notes.append("Δ vs m=1: against the arm's m = 1 arm, equal to it in every other key "
                     "(none pooled)")
    if with_control:
        notes.append(CONTROL_NOTE)
    elif any(c is not None for c in versus.get(CONTROL, [])):
        notes.append(NO_CONTROL_NOTE)
    if any(c is not None and c.found for cs in versus.values() for c in cs):
        notes.append(TEST_NOTE)
    if any(0 < a.n < expected_n for a in arms):
        notes.append(f"{FEW} fewer than {expected_n} finished seeds")
    if any(a.n == 0 for a in arms):
        notes.append("an arm without a finished seed keeps its row: its counts say why")
    return _with_bold_note(Table(
        "sweep", f"Sweep {label}: {name} per arm", "Arm", rows, columns, cells, digits=2,
        expected_n=expected_n, notes=notes, n_records=len(unique_trials(completed(df))),
        sweep=str(label), dataset="+".join(_datasets(df))))


def _with_bold_note(table: Table) -> Table:
    """``table``, its notes saying what bold means when some cell is bold."""
    if any(table.best(j) for j in range(len(table.columns))):
        table.notes.append(BOLD_NOTE)
    return table


#: How Δ and p are computed (tables' notes; every p also names its test).
TEST_NOTE = ("Δ [95% CI] and p: the paired t-test on the per-seed differences over the seeds "
             "both arms finished where they share at least 2 (one seed gives both arms the "
             "same initialisation, data subset and order, and a language model's BPTT window "
             "lengths), else arm mean − baseline mean and Welch's t-test; each p names its "
             "test")
#: The language model's control columns.
CONTROL_NOTE = ("Δ vs control: against the arm's m = 1 arm with one word-dropout mask per "
                "sequence (lm.mask_per_sequence = true), equal to it in every other key: "
                "MaxUp differs from it only in the max over copies; the m = 1 reference step "
                "draws one mask for the whole batch")
NO_CONTROL_NOTE = ("no per-sequence m = 1 control among these records (lm.mask_per_sequence "
                   "= true): the language-model arms are compared with the reference step "
                   "only, which also differs from MaxUp in drawing one mask per batch")


def _is_control(config: dict) -> bool:
    return config_value(config, REFERENCE.key) == REFERENCE.value and all(
        config_value(config, k) == v for k, v in CONTROL.also)


def _comparison_cells(cells: dict, i: int, j: int, arm: ArmStats, cmp: Comparison | None,
                      own: str) -> None:
    """The Δ and p cells (columns ``j``, ``j + 1``) of one arm against one baseline; ``own``:
    the text of an arm that is not compared (a baseline itself)."""
    control = cmp is not None and cmp.baseline is CONTROL
    if cmp is None:
        if own:
            cells[(i, j)] = cells[(i, j + 1)] = Cell(text=own)
        return
    if not cmp.found:
        cells[(i, j)] = cells[(i, j + 1)] = Cell(
            text="no control" if control else "no baseline")
        return
    if not arm.n:
        return
    n = cmp.n_pairs if cmp.test == PAIRED else arm.n
    which = {"control": cmp} if control else {"comparison": cmp}
    cells[(i, j)] = Cell(cmp.diff, n=n, ci_low=cmp.ci_low, ci_high=cmp.ci_high, **which)
    cells[(i, j + 1)] = Cell(cmp.p_value, n=n, **which)


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    """Rows whose config is known (records, or planned trials given their arm's config):
    what decides which config columns vary between arms."""
    if "run_config" not in df:
        return df
    known = df["run_config"].map(lambda c: isinstance(c, dict))
    return df[known] if known.any() else df


def _only_sweep(df: pd.DataFrame) -> str:
    if "sweep" not in df:
        return "(all)"
    names = sorted({str(s) for s in df["sweep"].dropna().unique()})
    return names[0] if len(names) == 1 else "(all)" if names else "(single runs)"


# ----------------------------------------------------------------------------- which tables
def tables_for(df: pd.DataFrame, vs_paper: bool = False) -> list[Table]:
    """Every table the records can fill: each paper table whose filter matches a record
    (Table 8 once per dataset with certified records, the paper's first), then the generic
    sweep table of each sweep that feeds no paper table (records that only carry a
    certification, e.g. a CPU-scale digits sweep, get both Table 8 and their sweep table).

    Args:
        df: a frame from :func:`maxup.analysis.load_records`.
        vs_paper: kept for symmetry with :func:`render` (published values are always attached).
    """
    out: list[Table] = []
    if not len(df):
        return out
    consumed = pd.Series(False, index=df.index)
    for spec in SPECS.values():
        mask = spec.filter(df).fillna(False).astype(bool)
        if not mask.any():
            continue
        rows = df[mask]
        present = _datasets(completed(rows) if spec.kind == "envelope" else rows)
        for ds in sorted(present, key=lambda d: (d != spec.dataset, d)) or (
                [None] if spec.kind != "envelope" else []):
            out.append(build_table(df, spec, vs_paper=vs_paper, dataset=ds))
        if spec.kind != "envelope":
            consumed |= mask
    # A certification sweep (paper table 8) also gets its accuracy / Δ table.
    pt = df["paper_table"] if "paper_table" in df else pd.Series(None, index=df.index)
    consumed |= pt.isin([i for i, sp in SPECS.items() if sp.kind != "envelope"])
    rest = df[~consumed]
    sweeps = rest["sweep"] if "sweep" in rest else pd.Series(None, index=rest.index)
    for name in sorted({s for s in sweeps.dropna().unique()}, key=str):
        out.append(sweep_table(rest[sweeps == name], name, frame=df))
    if sweeps.isna().any():
        out.append(sweep_table(rest[sweeps.isna()], None, frame=df))
    return out


def tables_with_id(df: pd.DataFrame, table_id: str, vs_paper: bool = False) -> list[Table]:
    """Every table of one id the records fill: a paper table once per dataset (the paper's
    first), ``"sweep"``: each sweep's table.

    Args:
        df: a frame from :func:`maxup.analysis.load_records`.
        table_id: a paper table number or ``"sweep"``.
    """
    if table_id == "sweep":
        return [t for t in tables_for(df, vs_paper) if t.id == "sweep"] or [sweep_table(df)]
    spec = SPECS[table_id]
    mask = spec.filter(df).fillna(False).astype(bool) if len(df) else pd.Series(dtype=bool)
    present = _datasets(completed(df[mask]) if spec.kind == "envelope" else df[mask]) \
        if len(df) else []
    ordered = sorted(present, key=lambda d: (d != spec.dataset, d))
    return [build_table(df, spec, vs_paper=vs_paper, dataset=ds) for ds in ordered] or \
        [build_table(df, spec, vs_paper=vs_paper)]


# -------------------------------------------------------------------------------- rendering
def _num(x: float, digits: int) -> str:
    return f"{x:.{digits}f}"


def _arm_text(mean: float, std: float, cell: Cell, digits: int, pm: str, dash: str) -> str:
    """``mean ± std (n = 4; 1 diverged) †``: every stat cell shows its n and other seeds."""
    text = dash if cell.n == 0 or not math.isfinite(mean) else _num(mean, digits)
    if cell.n >= 2 and math.isfinite(std):
        text += f" {pm} {_num(std, digits)}"
    text += f" ({cell.counts_text()})"
    if 0 < cell.n < MIN_SEEDS:
        text += f" {FEW}"
    return text


def _stat_text(cell: Cell, digits: int, pm: str, dash: str) -> str:
    if cell.arms:
        return " / ".join(_arm_text(a.mean, a.stats["std"], Cell.of_arm(a), digits, pm, dash)
                          for a in cell.arms)
    if cell.missing and not cell.others:
        return dash
    return _arm_text(cell.mean, cell.std, cell, digits, pm, dash)


def _cell_text(table: Table, col: Column, cell: Cell, pm: str, dash: str) -> str:
    if cell.text:
        return cell.text
    if col.kind == "stat":
        return _stat_text(cell, table.digits, pm, dash)
    if col.kind == "n" and cell.others:
        return cell.counts_text().removeprefix("n = ")
    cmp = cell.comparison or cell.control
    if col.kind == "p" and cmp is not None and cell.n:
        short = f"paired, n = {cmp.n_pairs}" if cmp.test == PAIRED else cmp.test
        if not math.isfinite(cell.mean):
            return f"n/a ({short}: {cmp.undefined or 'undefined'})"
        return f"{cell.mean:.3g} ({short})"
    if cell.missing:
        return dash
    if col.kind == "delta":
        return f"{cell.mean:+.{table.digits}f}" + (_ci_text(cmp, table.digits) if cmp else "")
    if col.kind == "p":
        return f"{cell.mean:.3g}" if math.isfinite(cell.mean) else "n/a"
    if col.kind == "value":
        where = f"{cell.setting}; " if cell.setting else ""
        return f"{_num(cell.mean, table.digits)} ({where}n = {cell.n})"
    if col.kind == "n":
        return cell.counts_text().removeprefix("n = ")
    if col.kind == "ci":
        if not (math.isfinite(cell.ci_low) and math.isfinite(cell.ci_high)):
            return "n/a"
        return f"[{_num(cell.ci_low, table.digits)}, {_num(cell.ci_high, table.digits)}]"
    raise ValueError(f"column kind {col.kind!r}")


def _pub_text(p: Published | None, digits: int, pm: str, dash: str) -> str:
    if p is None:
        return dash
    text = _num(p.value, digits)
    if p.std is not None:
        text += f" {pm} {_num(p.std, digits)}"
    return text


def _grid(table: Table, vs_paper: bool, pm: str, dash: str, bold) -> tuple[list, list]:
    """Header and body rows as text, with bold applied to the best reproduced cells."""
    header = [table.row_header]
    for c in table.columns:
        if vs_paper and c.kind in ("stat", "value"):
            header += [f"{c.label} paper", f"{c.label} ours", f"{c.label} Δ",
                       f"{c.label} in 95% CI"]
        else:
            header.append(c.label)
    best = [table.best(j) for j in range(len(table.columns))]
    body = []
    for i, (_, label) in enumerate(table.rows):
        line = [label]
        for j, c in enumerate(table.columns):
            cell = table.cell(i, j)
            text = _cell_text(table, c, cell, pm, dash)
            if i in best[j]:
                text = bold(text)
            if vs_paper and c.kind in ("stat", "value"):
                d = cell.delta
                inside = cell.inside_ci
                line += [("not comparable" if cell.not_comparable else
                          _pub_text(cell.published, table.digits, pm, dash)), text,
                         dash if not math.isfinite(d) else f"{d:+.{table.digits}f}",
                         dash if cell.published is None else
                         ("n/a" if inside is None else ("yes" if inside else "no"))]
            else:
                line.append(text)
        body.append(line)
    return header, body


def _has_published(table: Table) -> bool:
    return table.paper and table.id in PUBLISHED


def render_markdown(table: Table, vs_paper: bool = False) -> str:
    """Markdown: caption line, pipe table, notes (best per column in ``**bold**``).

    Args:
        table: the table.
        vs_paper: add paper / ours / Δ / inside-CI columns per cell.
    """
    vs_paper = vs_paper and _has_published(table)
    header, body = _grid(table, vs_paper, "±", MISSING, lambda t: f"**{t}**")
    esc = [[t.replace("|", "\\|") for t in row] for row in [header, *body]]
    lines = [f"**{table.title}**", ""]
    lines.append("| " + " | ".join(esc[0]) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    for note in table.notes:
        lines.append(f"\n_{note}_")
    return "\n".join(lines) + "\n"


_LATEX_ESC = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
              "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
              "^": r"\textasciicircum{}", "Δ": r"$\Delta$", "±": r"$\pm$", "—": "---",
              "ℓ": r"$\ell$", "−": "-"}


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters in plain text.

    Args:
        text: the text to escape.
    """
    return "".join(_LATEX_ESC.get(ch, ch) for ch in text)


def render_latex(table: Table, vs_paper: bool = False) -> str:
    """LaTeX booktabs table (``\\toprule``/``\\midrule``/``\\bottomrule``), best in ``\\textbf``.

    Args:
        table: the table.
        vs_paper: add paper / ours / Δ / inside-CI columns per cell.
    """
    vs_paper = vs_paper and _has_published(table)
    marker = "\x00B\x00"
    header, body = _grid(table, vs_paper, "±", MISSING, lambda t: marker + t + marker)

    def tex(t: str) -> str:
        if t.startswith(marker) and t.endswith(marker):
            return r"\textbf{" + latex_escape(t[len(marker):-len(marker)]) + "}"
        return latex_escape(t)

    spec = "l" + "r" * (len(header) - 1)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(table.title)}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(tex(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(tex(t) for t in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.notes:  # in the table itself, so they reach the PDF (no extra package needed)
        lines.append(r"\par\smallskip{\footnotesize")
        lines += [latex_escape(n) + r"\par" for n in table.notes]
        lines.append("}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _csv_num(x) -> str:
    if x is None:
        return ""
    x = float(x)
    return repr(x) if math.isfinite(x) else ""


#: Leading columns of the tidy CSV: which table, which cell, which statistic.
CSV_KEYS = ["table", "sweep", "dataset", "row", "column", "statistic", "arm", "arm_id"]


#: Per comparison in the CSV (``base_*``: the cell's baseline; ``control_*``: a language
#: model's per-sequence control): its n, Δ, Δ's 95% CI, p, the test and the seeds paired.
_CMP_FIELDS = ("n", "diff", "diff_ci_low", "diff_ci_high", "p", "test", "n_pairs")


def _cmp_csv(cmp: Comparison | None) -> list:
    if cmp is None or not cmp.found:
        return [""] * len(_CMP_FIELDS)
    return [cmp.base.n, _csv_num(cmp.diff), _csv_num(cmp.ci_low), _csv_num(cmp.ci_high),
            _csv_num(cmp.p_value), cmp.test, cmp.n_pairs]


def csv_header(vs_paper: bool = False) -> list[str]:
    """The columns of :func:`render_csv` (the same for every table, so many concatenate)."""
    head = [*CSV_KEYS, "text", "mean", "std", "n", "n_failed", "n_diverged", "n_running",
            "n_corrupt", "n_not_run", "n_planned", "ci_low", "ci_high", "best",
            *(f"{who}_{k}" for who in ("base", "control") for k in _CMP_FIELDS)]
    if vs_paper:
        head += ["published", "published_std", "delta", "inside_ci", "not_comparable"]
    return [*head, "notes"]


def render_csv(table: Table, vs_paper: bool = False, header: bool = True) -> str:
    """Tidy CSV, one line per cell with full-precision numbers (empty when missing).

    Columns (:func:`csv_header`): ``table, sweep, dataset, row, column, statistic`` (the
    column's kind: ``stat``, ``value``, ``n``, ``ci``, ``delta``, ``p``), ``arm, arm_id``,
    ``text, mean, std, n, n_failed, n_diverged, n_running, n_corrupt, n_not_run, n_planned,
    ci_low, ci_high, best``, then the comparison with the cell's baseline arm ``base_n,
    base_diff, base_diff_ci_low, base_diff_ci_high, base_p, base_test`` (``paired`` or
    ``Welch``) ``, base_n_pairs`` and the same ``control_*`` for a language model's
    per-sequence control (empty where there is none), with ``vs_paper`` ``published, published_std,
    delta, inside_ci, not_comparable``, and ``notes`` (the table's notes, `` | ``-joined). A
    cell holding several arms has one line per arm (``arm`` numbering them from 1). Every
    table has the same columns, so the CSV of several tables is one frame
    (``pandas.read_csv`` reads it in one call).

    Args:
        table: the table.
        vs_paper: add the published-value columns.
        header: start with the header line.
    """
    show = vs_paper and _has_published(table)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(csv_header(vs_paper))
    best = [table.best(j) for j in range(len(table.columns))]
    notes = " | ".join(table.notes)
    for i, (_, rlabel) in enumerate(table.rows):
        for j, col in enumerate(table.columns):
            cell = table.cell(i, j)
            parts = [(k + 1, Cell.of_arm(a), a.arm_id) for k, a in enumerate(cell.arms)] or \
                [("", cell, "")]
            for arm_no, c, arm_id in parts:
                line = [table.id, table.sweep, table.dataset, rlabel, col.label, col.kind,
                        arm_no, arm_id, _cell_text(table, col, c, "±", ""),
                        _csv_num(c.mean) if not c.missing else "", _csv_num(c.std), c.n,
                        c.n_failed, c.n_diverged, c.n_running, c.n_corrupt, c.n_pending,
                        c.n_planned, _csv_num(c.ci_low), _csv_num(c.ci_high),
                        int(i in best[j]), *_cmp_csv(c.comparison), *_cmp_csv(c.control)]
                if show:
                    p = cell.published
                    inside = c.inside_ci if not cell.arms else None
                    line += [_csv_num(p.value) if p else "", _csv_num(p.std) if p else "",
                             _csv_num(c.delta) if not cell.arms else "",
                             "" if inside is None else int(inside), cell.not_comparable]
                elif vs_paper:  # the same columns for every table: one frame
                    line += ["", "", "", "", cell.not_comparable]
                w.writerow([*line, notes])
    return buf.getvalue()


_RENDERERS = {"md": render_markdown, "latex": render_latex, "csv": render_csv}
EXTENSIONS = {"md": "md", "latex": "tex", "csv": "csv"}


def render(table: Table, fmt: str = "md", vs_paper: bool = False) -> str:
    """Render a table as ``"md"`` (default), ``"latex"`` or ``"csv"``.

    Args:
        table: from :func:`build_table` / :func:`sweep_table`.
        fmt: output format.
        vs_paper: show published / reproduced / Δ / inside-95%-CI per cell (paper tables).
    """
    if fmt not in _RENDERERS:
        raise UsageError(f"--format: got {fmt!r}; allowed: {', '.join(FORMATS)}")
    return _RENDERERS[fmt](table, vs_paper)
