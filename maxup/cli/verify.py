"""``maxup verify STORAGE [--trials K | --all] [--epochs N]``: rerun stored trials, compare."""

from __future__ import annotations

import argparse

EXAMPLE = """examples:
  maxup verify reproduction --trials 1 --epochs 1   # the first trial of each stored sweep
  maxup verify results/quickstart --all             # every completed trial of one sweep
  maxup verify runs/digits                          # a maxup train run directory

Reruns each chosen trial from its record's config on this machine, in a scratch directory
(the storage is only read), with the record's number of torch threads, and compares every
metric of every epoch but the timings. PASS: bit for bit. FAIL: the rerun parts from a record
that promises bit-identity (deterministic, same device kind and torch build; on CUDA also the
same GPU, CUDA and cuDNN); the first differing epoch and each metric's largest difference are
named. DIFF: it parts where bit-identity is not promised (the reason is printed). Exit status:
0 when nothing FAILs, 1 otherwise, 2 on bad input."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLE
    parser.add_argument("storage", help="a storage root, one sweep's folder, or a run directory")
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--trials", type=int, default=1, metavar="K",
                      help="the first K completed trials of each sweep, in manifest order "
                           "(default 1)")
    pick.add_argument("--all", action="store_true",
                      help="every completed trial, also those no manifest lists")
    parser.add_argument("--epochs", type=int, default=None, metavar="N",
                        help="rerun and compare only the first N epochs (default: all stored)")
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="data.root for the reruns (not part of a trial's id)")
    parser.add_argument("--scratch", default=None, metavar="DIR",
                        help="keep the reruns here (default: a temporary directory, removed)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from maxup.errors import UsageError

    if args.trials < 1:
        raise UsageError(f"--trials: got {args.trials}; allowed: an integer >= 1")
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs: got {args.epochs}; allowed: an integer >= 1")
    if args.scratch is not None:
        from maxup.cli import check_output_dir

        check_output_dir("--scratch", args.scratch)
    data_root = None
    if args.data_root is not None:
        from maxup.paths import resolve_path

        data_root = resolve_path(args.data_root, Path.cwd())
    from maxup.platform.verify import render, select, verify_trial

    chosen = select(args.storage, per_sweep=None if args.all else args.trials)
    print(f"verifying {len(chosen)} trial{'s' if len(chosen) != 1 else ''} from "
          f"{args.storage}", flush=True)
    failed = skipped = 0
    for cand in chosen:
        scratch = Path(args.scratch) if args.scratch else None
        out = verify_trial(cand, epochs=args.epochs, scratch=scratch, data_root=data_root)
        skipped += out.skipped is not None
        failed += not out.passed and out.skipped is None
        for line in render(out):
            print(line, flush=True)
    ok = len(chosen) - failed - skipped
    print(f"verify: {ok} of {len(chosen)} as promised, {failed} FAIL"
          + (f", {skipped} not rerun" if skipped else ""))
    return 1 if failed else 0
