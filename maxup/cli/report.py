"""``maxup report ROOT [--out FILE]``: argparse wiring for :mod:`maxup.analysis.report`.

Imports neither ray nor torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from maxup.errors import UsageError


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``maxup report ROOT [--out FILE]``.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument("root", metavar="ROOT",
                        help="a storage root holding <sweep>/sweep.json and trials/ "
                             "(e.g. reproduction)")
    parser.add_argument("--out", default="REPRODUCTION.md", metavar="FILE",
                        help="the Markdown file to write; figures go to "
                             "<its folder>/<ROOT name>/figures/ (default REPRODUCTION.md)")


def run(args: argparse.Namespace) -> int:
    """Write the reproduction document of the sweeps under ``args.root``.

    Args:
        args: ``root`` and ``out``.

    Returns:
        0 on success; bad input raises :class:`~maxup.errors.UsageError`.
    """
    from maxup.analysis.report import sweep_names, write_report
    from maxup.cli import check_output_dir

    root = Path(args.root)
    if not root.is_dir() or not sweep_names(root):
        raise UsageError(f"ROOT: got {args.root!r}; allowed: a local storage root with at "
                         "least one <sweep>/sweep.json")
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out: got {args.out!r} (a directory); allowed: a file path")
    check_output_dir("--out", out.parent)
    for path in write_report(root, out):
        print(f"wrote {path}")
    return 0
