"""``maxup tables RESULTS [--table N] [--format F] [--vs-paper] [--out DIR]``.

Argparse wiring for :mod:`maxup.analysis`, which builds and renders the tables. Neither this
module nor what it imports pulls in ray or torch: tables need no cluster and no GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from maxup.analysis.load import load_records, summary, summary_line
from maxup.analysis.specs import TABLE_IDS
from maxup.analysis.tables import (
    EXTENSIONS,
    FORMATS,
    Table,
    render,
    render_csv,
    tables_for,
    tables_with_id,
)
from maxup.errors import UsageError
from maxup.io import atomic_write_text
from maxup.store import MANIFEST, RECORD, TRIALS


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``maxup tables RESULTS [--table N] [--format F] [--vs-paper] [--out DIR]``.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument("results", metavar="RESULTS",
                        help="results root (local directory or URI such as s3://bucket/path)")
    parser.add_argument("--table", default=None,
                        help=f"one table: {', '.join(TABLE_IDS)} (default: every table the "
                             "records can fill)")
    parser.add_argument("--format", default="md",
                        help=f"output format: {', '.join(FORMATS)} (default md)")
    parser.add_argument("--vs-paper", action="store_true",
                        help="per cell: published, reproduced, delta, inside the 95%% CI")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="also write each table to DIR/table<N>_<dataset>.<ext> (a sweep's: "
                             "DIR/sweep_<name>_<dataset>.<ext>)")


def load_results(results: str, out=None):
    """Load the records under ``results``; UsageError naming RESULTS when none load.

    Args:
        results: the RESULTS argument: a local directory or a URI.
        out: where each skipped file's warning goes, one line each (default stderr).

    Returns:
        The records' DataFrame (:func:`maxup.analysis.load_records`).
    """
    out = out or sys.stderr
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = load_records(results)
    for w in caught:
        print(f"maxup: warning: {w.message}", file=out)
    s = summary(df)
    if len(df) == 0:
        extra = f" ({s['skipped']} unreadable files skipped)" if s["skipped"] else ""
        raise UsageError(f"RESULTS: no trial records found under {results!r}{extra}; allowed: "
                         f"a storage root ({TRIALS}/), a sweep folder (<sweep>/{MANIFEST}) or a "
                         f"folder holding **/{RECORD}")
    return df


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def file_names(tables: list[Table]) -> list[str]:
    """One file name (no extension) per table, each carrying the table's dataset (and sweep),
    never the same twice: two tables never overwrite each other's file."""
    names: list[str] = []
    for i, table in enumerate(tables):
        if table.id == "sweep":
            base = f"sweep_{_safe(table.sweep) or i}"
        else:
            base = f"table{table.id}"
        if table.dataset:
            base += f"_{_safe(table.dataset)}"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def run(args: argparse.Namespace) -> int:
    """Print (and with ``--out`` write) the tables regenerated from ``args.results``.

    ``--format csv`` prints one tidy frame on stdout (one header, a row per cell, the
    summary line on stderr), which ``pandas.read_csv`` reads in one call.

    Args:
        args: ``results``, ``table`` (id or None), ``format``, ``vs_paper``, ``out``.

    Returns:
        0 on success; bad input raises :class:`~maxup.errors.UsageError`.
    """
    table_id = getattr(args, "table", None)
    fmt = getattr(args, "format", "md") or "md"
    vs_paper = bool(getattr(args, "vs_paper", False))
    out_dir = getattr(args, "out", None)
    if table_id is not None:
        table_id = str(table_id)
        if table_id not in TABLE_IDS:
            raise UsageError(f"--table: got {table_id!r}; allowed: {', '.join(TABLE_IDS)}")
    if fmt not in FORMATS:
        raise UsageError(f"--format: got {fmt!r}; allowed: {', '.join(FORMATS)}")
    if out_dir:  # before the work: a file there was a crash after it
        from maxup.cli import check_output_dir

        check_output_dir("--out", out_dir)
    df = load_results(args.results)
    csv_out = fmt == "csv"
    info = sys.stderr if csv_out else sys.stdout
    print(summary_line(df), file=info)
    tables = tables_for(df) if table_id is None else tables_with_id(df, table_id)
    if vs_paper and not any(t.id != "sweep" for t in tables):
        print("note: --vs-paper applies to paper tables; these records fill none", file=info)
    written = []
    for i, (table, name) in enumerate(zip(tables, file_names(tables), strict=True)):
        text = render(table, fmt, vs_paper=vs_paper)
        if csv_out:
            print(render_csv(table, vs_paper, header=i == 0), end="")
        else:
            print()
            print(text, end="")
        missing = table.missing()
        if missing:
            cells = "; ".join(f"{r} / {c}" for r, c in missing)
            print(f"missing cells ({len(missing)}): {cells}", file=info)
        if out_dir:
            path = os.path.join(out_dir, f"{name}.{EXTENSIONS[fmt]}")
            atomic_write_text(path, text)
            written.append(path)
    for path in written:
        print(f"wrote {path}", file=info)
    return 0
