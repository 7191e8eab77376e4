"""``maxup sweep FILE [--dry-run] [--storage PATH] [--address auto|HOST:PORT] [--rerun-failed]``."""

from __future__ import annotations

import argparse
import os

EXAMPLE = """examples:
  maxup sweep search_spaces/quickstart.yaml                 # embedded local Ray, ./results
  maxup sweep search_spaces/quickstart.yaml --dry-run       # print the trials, launch nothing
  maxup sweep search_spaces/table5_m_ablation.yaml --address auto --storage /nfs/maxup
  maxup sweep search_spaces/quickstart.yaml --rerun-failed  # run failed trials again

Running the same file against the same storage resumes it: completed trials are skipped,
interrupted ones continue from their last checkpoint."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLE
    parser.add_argument("space", help="search-space YAML (search_spaces/*.yaml)")
    parser.add_argument("--storage", default="results",
                        help="root for records and checkpoints (default: ./results)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join ('auto' or HOST:PORT); default: embedded local")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the expanded trial table and resources; launch nothing")
    parser.add_argument("--resume", action="store_true",
                        help="(the default) skip completed trials, resume interrupted ones")
    parser.add_argument("--rerun-failed", action="store_true",
                        help="also run trials whose record says failed")
    parser.add_argument("--no-table", action="store_true",
                        help="do not print the results table at the end")


def run(args: argparse.Namespace) -> int:
    from maxup.errors import UsageError
    from maxup.platform.space import check_space, load_space

    spec = load_space(args.space)
    trials = spec.expand()
    storage = args.storage
    if "://" in storage:
        try:
            import pyarrow.fs

            pyarrow.fs.FileSystem.from_uri(storage)
        except (ValueError, OSError, ImportError) as exc:
            raise UsageError(f"--storage: {storage!r} cannot be opened ({exc}); allowed: a "
                             "directory, or a URI pyarrow reads (s3://, gs://, file://)") from None
    cpus = float(os.cpu_count() or 1) if not args.address else None
    gpus = local_gpus() if not args.address else None
    check_space(spec, trials, cpus, gpus)
    if args.dry_run:
        print_plan(spec, trials, storage, cpus, gpus)
        return 0
    from maxup.platform.sweep import run_sweep

    summary = run_sweep(spec, trials, storage, address=args.address,
                        rerun_failed=args.rerun_failed)
    from maxup.platform.sweep import sweep_layout

    results = sweep_layout(storage, spec.name).results
    if not args.no_table and summary.completed + summary.skipped:
        _print_table(results)
    print(f"table: maxup tables {results}")
    return 0 if summary.ok else 1


def local_gpus() -> float:
    """GPUs the embedded local Ray will see (CUDA devices visible to this process)."""
    import torch

    return float(torch.cuda.device_count())


def print_plan(spec, trials, storage: str, cpus: float | None,
               gpus: float | None = None) -> None:
    from maxup.platform.space import max_concurrent, trial_cpus
    from maxup.platform.sweep import record_statuses, sweep_layout
    from maxup.records import Status

    axes = spec.varying_axes()
    widths = {a: max(len(a), *(len(str(t.axes[a])) for t in trials)) for a in axes}
    layout = sweep_layout(storage, spec.name)
    # Read only: a dry run writes nothing, not even a local scratch copy of remote records.
    stored = record_statuses(trials, layout, remote=layout.remote is not None)
    print(f"sweep {spec.name}: {len(trials)} trials ({len(trials) // len(spec.seeds)} arms × "
          f"{len(spec.seeds)} seeds), storage {str(storage).rstrip('/')}/{spec.name}")
    # The "stored" column (status of a record already in the storage, e.g. from another
    # sweep that shares the trial) appears only when the storage holds any of these trials.
    any_stored = any(s is not None for s in stored.values())
    print("  #  trial_id      " + "  ".join(a.ljust(widths[a]) for a in axes)
          + ("  stored" if any_stored else ""))
    for i, t in enumerate(trials):
        mark = f"  {stored[t.trial_id] or '-'}" if any_stored else ""
        print(f"{i:>3}  {t.trial_id}  "
              + "  ".join(str(t.axes[a]).ljust(widths[a]) for a in axes) + mark)
    done = sum(s is Status.COMPLETED for s in stored.values())
    print(f"stored: {done} of {len(trials)} trials already completed in the storage "
          f"(skipped when run), {len(trials) - done} to train")
    need = trial_cpus(spec, trials[0].config)
    slots = max_concurrent(spec, trials, cpus or need * spec.concurrency,
                           gpus if gpus is not None else spec.gpus_per_trial * spec.concurrency)
    print(f"resources: {need:g} CPU and {spec.gpus_per_trial:g} GPU per trial; "
          f"{slots} trial(s) at a time" + (f" on this machine's {cpus:g} CPUs" if cpus else ""))


def _print_table(results: str) -> None:
    from maxup.cli.tables import run as run_tables

    print()
    run_tables(argparse.Namespace(results=str(results), table=None, format="md",
                                  vs_paper=False, out=None))
