"""``maxup figures RESULTS [--out DIR]``: argparse wiring for :mod:`maxup.analysis.figures`.

Imports neither ray nor torch; matplotlib is imported only once records have loaded.
"""

from __future__ import annotations

import argparse

from maxup.analysis.load import summary_line
from maxup.cli.tables import load_results


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``maxup figures RESULTS [--out DIR]``.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument("results", metavar="RESULTS",
                        help="results root (local directory or URI)")
    parser.add_argument("--out", default="figures", metavar="DIR",
                        help="output directory for PNG and PDF files (default ./figures)")


def run(args: argparse.Namespace) -> int:
    """Write every figure the records under ``args.results`` can fill into ``args.out``.

    Args:
        args: ``results`` and ``out``.

    Returns:
        0 on success; bad input raises :class:`~maxup.errors.UsageError`.
    """
    from maxup.cli import check_output_dir

    out = getattr(args, "out", None) or "figures"
    check_output_dir("--out", out)  # before the work: a file there was a crash after it
    df = load_results(args.results)
    print(summary_line(df))
    from maxup.analysis.figures import write_figures

    paths = write_figures(df, out)
    if not paths:
        print("no figure can be drawn from these records (no completed trials with history, "
              "m sweep or certification)")
    for path in paths:
        print(f"wrote {path}")
    return 0
