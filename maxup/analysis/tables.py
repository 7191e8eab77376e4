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

from maxup.analysis.load import completed
from maxup.analysis.published import PUBLISHED, Published
from maxup.analysis.published import published as lookup_published
from maxup.analysis.specs import METHOD, METRIC, RADIUS, SPECS, TableSpec
from maxup.analysis.stats import aggregate, arm_columns, compare, describe
from maxup.errors import UsageError

FORMATS = ("md", "latex", "csv")
MISSING = "—"
NAN = math.nan


@dataclass
class Cell:
    """One table cell.

    Args:
        mean: the value (mean over seeds; the envelope maximum; a difference; a p-value).
        std: sample std over seeds (NaN when n < 2 or not a mean).
        n: observations behind the value (0: missing).
        ci_low: lower 95% Student-t bound of the mean (NaN when n < 2).
        ci_high: upper bound.
        published: the paper's value for this cell, if any.
        note: why the cell is what it is (e.g. which arm was picked).
    """

    mean: float = NAN
    std: float = NAN
    n: int = 0
    ci_low: float = NAN
    ci_high: float = NAN
    published: Published | None = None
    note: str = ""

    @property
    def missing(self) -> bool:
        return self.n == 0 or not math.isfinite(self.mean)

    @property
    def delta(self) -> float:
        """Reproduced minus published (NaN without both)."""
        if self.missing or self.published is None:
            return NAN
        return self.mean - self.published.value

    @property
    def inside_ci(self) -> bool | None:
        """Whether the published value lies in the reproduced 95% CI (None if undefined)."""
        if self.published is None or not math.isfinite(self.ci_low):
            return None
        return bool(self.ci_low <= self.published.value <= self.ci_high)


@dataclass
class Column:
    """A table column: its label, its key, and how its cells print.

    Args:
        label: header text.
        key: the axis value (method key, model name, metric, radius) or a name.
        kind: ``"stat"`` (mean ± std (n)), ``"value"`` (one number), ``"delta"`` (signed),
            ``"p"`` (p-value), ``"n"`` (the cell's count) or ``"ci"`` (its 95% t-interval).
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

    def cell(self, row: int, col: int) -> Cell:
        """The cell at (row index, column index); an empty (missing) cell when absent."""
        return self.cells.get((row, col)) or Cell()

    def missing(self) -> list[tuple[str, str]]:
        """``(row label, column label)`` of every stat/value cell without data."""
        return [(rl, c.label) for i, (_, rl) in enumerate(self.rows)
                for j, c in enumerate(self.columns)
                if c.kind in ("stat", "value") and self.cell(i, j).missing]

    def best(self, col: int) -> set[int]:
        """Row indices holding the best value of column ``col`` (ties all count)."""
        c = self.columns[col]
        if not c.rank:
            return set()
        vals = {i: self.cell(i, col).mean for i in range(len(self.rows))
                if not self.cell(i, col).missing}
        if not vals:
            return set()
        target = min(vals.values()) if c.lower_is_better else max(vals.values())
        return {i for i, v in vals.items() if v == target}


# ----------------------------------------------------------------------------------- building
def _method_series(df: pd.DataFrame, baseline: dict) -> pd.Series:
    is_base = pd.Series(True, index=df.index)
    for k, v in baseline.items():
        col = df[k] if k in df else pd.Series(np.nan, index=df.index)
        is_base &= (col == v).fillna(False).astype(bool)
    return pd.Series(np.where(is_base, "baseline", "maxup"), index=df.index, dtype=object)


def _key_series(df: pd.DataFrame, key: str, spec: TableSpec) -> pd.Series:
    if key == METHOD:
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


def _cert_at(cert: dict, radius: float) -> float:
    radii = cert.get("radii") or []
    accs = cert.get("certified_accuracy") or []
    for r, a in zip(radii, accs):
        if r is not None and abs(float(r) - radius) < 1e-9 and a is not None:
            return float(a)
    return NAN


def _stat_cell(sub: pd.DataFrame, metric: str, scale: float) -> tuple[Cell, str]:
    """Mean ± std over seeds; when the cell holds several arms, the best arm is shown."""
    if metric not in sub:
        return Cell(), ""
    arms = arm_columns(sub) if len(sub) > 1 else []
    note = ""
    if arms:
        agg = aggregate(sub, metric, by=arms)
        agg = agg[agg["n"] > 0]
        if len(agg) > 1:
            best = agg.loc[agg["mean"].idxmax()]
            keep = pd.Series(True, index=sub.index)
            for a in arms:
                val = best[a]
                col = sub[a]
                keep &= col.isna() if pd.isna(val) else (col == val).fillna(False).astype(bool)
            sub = sub[keep]
            note = (f"{len(agg)} arms in this cell; showing the best by mean: "
                    + ", ".join(f"{_short(a)}={_fmt_key(best[a])}" for a in arms))
    d = describe(pd.to_numeric(sub[metric], errors="coerce").to_numpy(dtype=float) * scale)
    return Cell(d["mean"], d["std"], d["n"], d["ci_low"], d["ci_high"], note=note), note


def build_table(df: pd.DataFrame, spec: TableSpec | str, vs_paper: bool = False,
                _done: pd.DataFrame | None = None) -> Table:
    """Regenerate one paper table from records.

    Args:
        df: a frame from :func:`maxup.analysis.load_records` (only completed trials are used).
        spec: a :class:`TableSpec` or a table id (``"3"``).
        vs_paper: kept for symmetry with :func:`render`; published values are always attached
            to the cells and shown when rendering with ``vs_paper=True``.
    """
    if isinstance(spec, str):
        if spec not in SPECS:
            raise UsageError(f"--table: got {spec!r}; allowed: {', '.join(SPECS)}, sweep")
        spec = SPECS[spec]
    sub = _done
    if sub is None:
        done = completed(df)
        sub = done[spec.filter(done)] if len(done) else done
    rkeys = _key_series(sub, spec.rows.key, spec).map(_norm)
    if spec.cols.key in (METRIC, RADIUS):
        ckeys = None
        present_cols: list = []
    else:
        ckeys = _key_series(sub, spec.cols.key, spec).map(_norm)
        present_cols = list(ckeys.dropna().unique())
    rows = _axis_values(spec.rows, rkeys.dropna().unique())
    cols_axis = _axis_values(spec.cols, present_cols)
    columns = [Column(label, key, lower_is_better=spec.lower_is_better) for key, label in
               cols_axis]
    table = Table(spec.id, f"Table {spec.id}: {spec.title}", spec.rows.title or "",
                  rows, columns, {}, digits=spec.digits, expected_n=spec.expected_n,
                  n_records=len(sub))
    notes: list[str] = []
    row_groups = {k: idx for k, idx in sub.groupby(rkeys, dropna=True).groups.items()}
    for i, (rv, rlabel) in enumerate(rows):
        idx = row_groups.get(rv)
        rsub = sub.loc[idx] if idx is not None else sub.iloc[0:0]
        for j, (cv, clabel) in enumerate(cols_axis):
            if spec.kind == "envelope":
                certs = [c for c in rsub["certification"] if isinstance(c, dict)] \
                    if "certification" in rsub else []
                vals = [v for v in (_cert_at(c, float(cv)) for c in certs) if math.isfinite(v)]
                cell = Cell(max(vals) * spec.scale, n=len(vals)) if vals else Cell()
            else:
                csub = rsub if ckeys is None else rsub[ckeys.loc[rsub.index] == cv]
                metric = cv if spec.cols.key == METRIC else spec.metric
                cell, note = _stat_cell(csub, metric, spec.scale)
                if note:
                    notes.append(f"{rlabel} / {clabel}: {note}")
            cell.published = lookup_published(spec.id, rv, cv)
            table.cells[(i, j)] = cell
    if spec.kind == "envelope":
        notes.append("each cell: best certified accuracy over the trained models of the method "
                     "(upper envelope, Salman et al. 2019)")
    table.notes = notes
    return table



def _short(col: str) -> str:
    name = col.removeprefix("config.")
    return "m" if name == "maxup.m" else name


def _fmt_key(v) -> str:
    v = _norm(v)
    return "null" if v is None else str(v)


def _sweep_metric(done: pd.DataFrame) -> tuple[str, str, bool]:
    for metric, best, lower in (("final.test_acc", "best.test_acc", False),
                                ("final.test_ppl", "best.test_ppl", True)):
        if metric in done and pd.to_numeric(done[metric], errors="coerce").notna().any():
            return metric, best, lower
    return "final.test_acc", "best.test_acc", False


def sweep_table(df: pd.DataFrame, sweep: str | None = None, expected_n: int = 5) -> Table:
    """The generic table of one sweep: one row per arm (every varying config column but the
    seed), final metric mean ± std (n), best-epoch metric, and Δ / Welch p vs the m = 1 arm.

    Args:
        df: records (of one sweep, or pass ``sweep`` to select it).
        sweep: sweep name to select (None: use all of ``df``).
        expected_n: seeds per arm below which a cell shows its n.
    """
    if sweep is not None and "sweep" in df:
        df = df[df["sweep"] == sweep]
    done = completed(df)
    metric, best_metric, lower = _sweep_metric(done)
    arms = arm_columns(done)
    agg = aggregate(done, metric, by=arms)
    best_agg = aggregate(done, best_metric, by=arms) if best_metric in done else None
    has_m = "config.maxup.m" in done and (done["config.maxup.m"] == 1).any()
    cmp = compare(done, metric, by=arms) if has_m else None
    name = metric.split(".", 1)[1]
    unit = "%" if metric.endswith("acc") else "ppl"
    columns = [Column(f"final {name} ({unit})", metric, lower_is_better=lower),
               Column(f"best {name} ({unit})", best_metric, lower_is_better=lower),
               Column("n", "n", kind="n", rank=False),
               Column("95% CI (final)", "ci", kind="ci", rank=False)]
    if cmp is not None:
        columns += [Column("Δ vs m=1", "diff", kind="delta", rank=False),
                    Column("Welch p", "p_value", kind="p", rank=False)]
    rows, cells = [], {}
    for i, rec in enumerate(agg.to_dict("records")):
        key = tuple(_norm(rec[a]) for a in arms)
        label = ", ".join(f"{_short(a)}={_fmt_key(v)}" for a, v in zip(arms, key)) or "all"
        rows.append((key, label))
        cells[(i, 0)] = Cell(rec["mean"], rec["std"], rec["n"], rec["ci_low"], rec["ci_high"])
        cells[(i, 2)] = cells[(i, 3)] = cells[(i, 0)]
        if best_agg is not None:
            b = best_agg.iloc[i]
            cells[(i, 1)] = Cell(b["mean"], b["std"], int(b["n"]), b["ci_low"], b["ci_high"])
        if cmp is not None and len(cmp):
            match = pd.Series(True, index=cmp.index)
            for a, v in zip(arms, key):
                match &= cmp[a].isna() if v is None else (cmp[a].map(_norm) == v)
            hit = cmp[match]
            if len(hit):
                h = hit.iloc[0]
                cells[(i, 4)] = Cell(h["diff"], n=int(h["n"]))
                cells[(i, 5)] = Cell(h["p_value"], n=int(h["n"]))
    label = "(single runs)" if sweep is None and df.get("sweep") is not None and \
        df["sweep"].isna().all() else (sweep or _only_sweep(df))
    notes = []
    if not arms:
        notes.append("no config column varies: one arm")
    if cmp is not None:
        notes.append("Δ: arm mean − mean of the m = 1 arm matching it on every other column; "
                     "p: Welch's t-test")
    return Table("sweep", f"Sweep {label}: {name} per arm", "Arm", rows, columns, cells,
                 digits=2, expected_n=expected_n, notes=notes, n_records=len(done),
                 sweep=str(label))


def _only_sweep(df: pd.DataFrame) -> str:
    if "sweep" not in df:
        return "(all)"
    names = sorted({str(s) for s in df["sweep"].dropna().unique()})
    return names[0] if len(names) == 1 else "(all)" if names else "(single runs)"


# ----------------------------------------------------------------------------- which tables
def tables_for(df: pd.DataFrame, vs_paper: bool = False) -> list[Table]:
    """Every table the records can fill: each paper table whose filter matches a completed
    record, then the generic sweep table of each sweep that feeds no paper table (records
    that only carry a certification, e.g. a CPU-scale digits sweep, get both Table 8 and
    their sweep table).

    Args:
        df: a frame from :func:`maxup.analysis.load_records`.
        vs_paper: kept for symmetry with :func:`render` (published values are always attached).
    """
    done = completed(df)
    out: list[Table] = []
    if not len(done):
        return out
    consumed = pd.Series(False, index=done.index)
    for spec in SPECS.values():
        mask = spec.filter(done).fillna(False).astype(bool)
        if mask.any():
            out.append(build_table(df, spec, vs_paper=vs_paper, _done=done[mask]))
            if spec.kind != "envelope":
                consumed |= mask
    pt = done["paper_table"] if "paper_table" in done else pd.Series(None, index=done.index)
    consumed |= pt.isin(list(SPECS))
    rest = done[~consumed]
    sweeps = rest["sweep"] if "sweep" in rest else pd.Series(None, index=rest.index)
    for name in sorted({s for s in sweeps.dropna().unique()}, key=str):
        out.append(sweep_table(rest[sweeps == name], name))
    if sweeps.isna().any():
        out.append(sweep_table(rest[sweeps.isna()], None))
    return out


# -------------------------------------------------------------------------------- rendering
def _num(x: float, digits: int) -> str:
    return f"{x:.{digits}f}"


def _stat_text(cell: Cell, digits: int, expected_n: int | None, pm: str, dash: str) -> str:
    if cell.missing:
        return dash
    text = _num(cell.mean, digits)
    if cell.n >= 2 and math.isfinite(cell.std):
        text += f" {pm} {_num(cell.std, digits)}"
    if expected_n and cell.n < expected_n:
        text += f" (n={cell.n})"
    return text


def _cell_text(table: Table, col: Column, cell: Cell, pm: str, dash: str) -> str:
    if cell.missing:
        return dash
    if col.kind == "delta":
        return f"{cell.mean:+.{table.digits}f}"
    if col.kind == "p":
        return f"{cell.mean:.3g}" if math.isfinite(cell.mean) else "n/a"
    if col.kind == "value":
        return _num(cell.mean, table.digits)
    if col.kind == "n":
        return str(cell.n)
    if col.kind == "ci":
        if not (math.isfinite(cell.ci_low) and math.isfinite(cell.ci_high)):
            return "n/a"
        return f"[{_num(cell.ci_low, table.digits)}, {_num(cell.ci_high, table.digits)}]"
    return _stat_text(cell, table.digits, table.expected_n, pm, dash)


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
                line += [_pub_text(cell.published, table.digits, pm, dash), text,
                         dash if not math.isfinite(d) else f"{d:+.{table.digits}f}",
                         dash if cell.published is None else
                         ("n/a" if inside is None else ("yes" if inside else "no"))]
            else:
                line.append(text)
        body.append(line)
    return header, body


def _has_published(table: Table) -> bool:
    return table.id in PUBLISHED


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
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    lines += [f"% {latex_escape(n)}" for n in table.notes]
    return "\n".join(lines) + "\n"


def _csv_num(x) -> str:
    if x is None:
        return ""
    x = float(x)
    return repr(x) if math.isfinite(x) else ""


def render_csv(table: Table, vs_paper: bool = False) -> str:
    """Tidy CSV, one line per cell with full-precision numbers (empty when missing).

    Columns: ``table, row, column, text, mean, std, n, ci_low, ci_high, best`` and with
    ``vs_paper`` ``published, published_std, delta, inside_ci``.

    Args:
        table: the table.
        vs_paper: add the published-value columns.
    """
    vs_paper = vs_paper and _has_published(table)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["table", "row", "column", "text", "mean", "std", "n", "ci_low", "ci_high", "best"]
    if vs_paper:
        head += ["published", "published_std", "delta", "inside_ci"]
    w.writerow(head)
    best = [table.best(j) for j in range(len(table.columns))]
    for i, (_, rlabel) in enumerate(table.rows):
        for j, col in enumerate(table.columns):
            cell = table.cell(i, j)
            line = [table.id, rlabel, col.label, _cell_text(table, col, cell, "±", ""),
                    _csv_num(cell.mean) if not cell.missing else "", _csv_num(cell.std),
                    cell.n, _csv_num(cell.ci_low), _csv_num(cell.ci_high),
                    int(i in best[j])]
            if vs_paper:
                p = cell.published
                inside = cell.inside_ci
                line += [_csv_num(p.value) if p else "", _csv_num(p.std) if p else "",
                         _csv_num(cell.delta), "" if inside is None else int(inside)]
            w.writerow(line)
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
