"""Offline analysis of stored trial records: the paper's tables and figures in seconds.

Never imports ray or torch. Public API::

    df = load_records("results/")            # one row per trial (see docs/records.md)
    summary(df)                               # completed / failed (reasons) / running / skipped
    aggregate(df, "final.test_acc")           # per-arm n, mean, std, 95% t-CI, min, max
    compare(df, "final.test_acc")             # each MaxUp arm vs its m = 1 arm: diff, CI, p
                                              # (paired by seed, else Welch); CONTROL: an LM
                                              # arm vs its per-sequence m = 1 control
    render(build_table(df, "3"), "latex", vs_paper=True)
    for t in tables_for(df): print(render(t))
    write_figures(df, "figures/")             # PNG + PDF (matplotlib imported lazily)
"""

from maxup.analysis.arms import compare
from maxup.analysis.load import completed, load_records, summary, summary_line
from maxup.analysis.published import PUBLISHED, REFERENCE_ROWS, Published, published
from maxup.analysis.specs import SPECS, TABLE_IDS, Axis, TableSpec
from maxup.analysis.stats import EXCLUDED_COLUMNS, aggregate, arm_columns, describe
from maxup.analysis.tables import (
    FORMATS,
    Cell,
    Column,
    Table,
    build_table,
    render,
    sweep_table,
    tables_for,
)

__all__ = [
    "EXCLUDED_COLUMNS", "FORMATS", "PUBLISHED", "REFERENCE_ROWS", "SPECS", "TABLE_IDS", "Axis",
    "Cell", "Column", "Published", "Table", "TableSpec", "aggregate", "arm_columns",
    "build_table", "compare", "completed", "describe", "load_records", "published", "render",
    "summary", "summary_line", "sweep_table", "tables_for", "write_figures",
]


def __getattr__(name):
    if name == "write_figures":  # matplotlib only when figures are asked for
        from maxup.analysis.figures import write_figures

        return write_figures
    raise AttributeError(f"module 'maxup.analysis' has no attribute {name!r}")
