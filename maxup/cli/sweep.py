"""``maxup sweep FILE [--section.key=value …] [--dry-run] [--plan-for cluster.yaml] [--storage PATH]
[--address auto|HOST:PORT] [--rerun-failed] [--replan] [--verbose]``."""

from __future__ import annotations

import argparse
import os
import sys
import time

EXAMPLE = """examples:
  maxup sweep search_spaces/quickstart.yaml                 # embedded local Ray, ./results
  maxup sweep search_spaces/quickstart.yaml --dry-run       # trials and their cost; runs nothing
  maxup sweep search_spaces/table3_cifar10.yaml --dry-run --plan-for cluster.yaml
  maxup sweep search_spaces/table3_cifar10.yaml --data.root=/data/cifar   # override every trial
  maxup sweep search_spaces/table5_m_ablation.yaml --address auto --storage /nfs/maxup
  maxup sweep search_spaces/quickstart.yaml --rerun-failed  # run failed trials again

Running the same file against the same storage resumes it: completed trials are skipped,
interrupted ones continue from their last checkpoint. The sweep's manifest
(STORAGE/NAME/sweep.json) keeps the overrides and the exact command: run again without
overrides, a sweep reuses the manifest's; a plan that differs from the manifest (other
overrides, an edited file) is refused unless --replan. Overrides of the space itself:
--seeds=N or --seeds=[0,3], --concurrency=N, --retries=N, --resources.cpus_per_trial=N,
--resources.gpus_per_trial=N, --resources.cpus_per_worker=N. Pending trials start longest first
(estimated cost: `maxup calibrate` profiles). Dotted overrides apply to every trial before
its id is computed. Relative data.root and model.weights paths (in the space or overrides) are
relative to the directory this command runs from: they are made absolute here, before the
preflight, since trials run in Ray workers elsewhere."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLE
    parser.add_argument("space", help="search-space YAML (search_spaces/*.yaml)")
    parser.add_argument("--storage", default="results",
                        help="root for records and checkpoints (default: ./results)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join ('auto' or HOST:PORT); default: embedded local")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the trials, their estimated cost (time per trial, GPU- or "
                             "CPU-hours, wall-clock) and the preflight; launch nothing")
    parser.add_argument("--resume", action="store_true",
                        help="(the default) skip completed trials, resume interrupted ones")
    parser.add_argument("--rerun-failed", action="store_true",
                        help="also run trials whose record says failed")
    parser.add_argument("--replan", action="store_true",
                        help="run a plan that differs from the sweep's stored manifest (other "
                             "overrides, an edited space) and replace the manifest with it; "
                             "without it such a run is refused. Stored records are kept")
    parser.add_argument("--no-table", action="store_true",
                        help="do not print the results table at the end")
    parser.add_argument("--plan-for", default=None, metavar="CLUSTER_YAML",
                        help="price the dry run for this Ray cluster-launcher file's nodes")
    parser.add_argument("--verbose", action="store_true",
                        help="also print Tune's full status table every 30 s")
    parser.add_argument("--mlflow", default=None, metavar="URI",
                        help="also log every trial to this MLflow tracking URI (file:/path "
                             "needs no server; pip install 'maxup[mlflow]')")
    parser.add_argument("--order", choices=("longest-first", "file"), default="longest-first",
                        help="submission order of pending trials (default: longest estimated "
                             "cost first; file: the space's own order)")
    parser.set_defaults(accepts_extra=True)


def run(args: argparse.Namespace) -> int:
    from maxup.platform import interrupt

    with interrupt.catching():
        return _command(args)


def _command(args: argparse.Namespace) -> int:
    from maxup.cli import parse_extra
    from maxup.errors import UsageError
    from maxup.platform.space import apply_overrides, check_space, load_space, refuse_here
    from maxup.platform.sweep import plan_difference, refuse_replan, stored_manifest

    spec = load_space(args.space)
    from maxup.platform.space import SPACE_OVERRIDES

    given = parse_extra(args.extra, (*SPACE_OVERRIDES, "resources"))
    storage = args.storage
    _check_storage(storage)
    prior = stored_manifest(storage, spec.name)
    from maxup import store

    where = store.Storage(storage).shown(store.manifest_rel(spec.name))
    inherited = not given and prior is not None and bool(prior.overrides) and not args.replan
    apply_overrides(spec, prior.overrides if inherited else given)
    trials = spec.expand()
    command = rerun_command(args, spec.overrides)
    difference = None if args.replan else plan_difference(prior, trials, where)
    if difference is not None and not args.dry_run:
        raise refuse_replan(spec, prior, difference)
    if inherited:
        print(f"overrides from the manifest ({where}): {prior.override_args()}")
    cpus = float(os.cpu_count() or 1) if not args.address else None
    gpus = local_gpus() if not args.address else None
    if args.dry_run:
        from maxup.platform import plan

        check_space(spec, trials, None, None)  # model and dataset names
        needs_cluster = plan.needs_cluster(spec, trials, cpus, gpus)
        print_plan(spec, trials, storage, cpus, gpus, needs_cluster=needs_cluster,
                   plan_for=args.plan_for, address=args.address)
        if difference is not None:
            print(f"manifest: this dry run plans {difference}; a real run is refused unless "
                  "--replan (which replaces the manifest; stored records are kept)")
        print(f"command: {command}")
        return 0
    if args.plan_for:
        raise UsageError("--plan-for: only with --dry-run (a real sweep runs on --address)")
    if not args.address:  # a space this machine cannot run: say what to do instead
        refuse_here(spec, trials, cpus, gpus)
    # The first line, before torch is imported for the registries (seconds on a busy machine)
    arms = len(trials) // len(spec.seeds)
    print(f"sweep {spec.name}: {len(trials)} trials ({arms} arms × {len(spec.seeds)} seeds), "
          f"storage {str(storage).rstrip('/')}/{spec.name}; reading its records, checking the "
          "data", flush=True)
    args.first_line_at = time.monotonic()
    check_space(spec, trials, cpus, gpus)
    from maxup.platform.views import check_mlflow

    check_mlflow(args.mlflow)

    try:
        return _run(args, spec, trials, storage, command)
    except KeyboardInterrupt:
        return _interrupted(spec, trials, storage, command)


def _run(args, spec, trials, storage: str, command: str) -> int:
    from maxup.errors import UsageError
    from maxup.platform.liveness import Heartbeat
    from maxup.platform.sweep import read_stored, run_sweep, sweep_layout

    stored = None
    # A line at least every 10 s from the first one on, also while the data is opened.
    with Heartbeat(lambda silent: "... reading the records, checking the data, reaching Ray",
                   last_line_at=args.first_line_at) as beat:
        if not args.address:
            from maxup.platform.preflight import preflight

            # The one reading of the stored records: the preflight and the sweep both use it.
            stored = read_stored(trials, sweep_layout(storage, spec.name))
            preflight(_to_train(spec, trials, storage, args.rerun_failed, stored))
        else:  # a bounded wait and one line, before the manifest is written or Ray joined
            from maxup.platform.distributed import probe_cluster

            try:
                probe_cluster(args.address)
            except UsageError as exc:
                raise UsageError(f"--{exc}") from None
    summary = run_sweep(spec, trials, storage, address=args.address,
                        rerun_failed=args.rerun_failed, verbose=args.verbose,
                        order="longest_first" if args.order == "longest-first" else "given",
                        mlflow=args.mlflow, stored=stored, command=command,
                        last_line_at=beat.last_line_at)
    results = sweep_layout(storage, spec.name).results
    if not args.no_table and summary.completed + summary.skipped:
        _print_table(results)
    print(f"table: maxup tables {results}")
    if not summary.ok:
        print(f"to continue: {command}")
    return 0 if summary.ok else 1


def _interrupted(spec, trials, storage: str, command: str) -> int:
    """After a Ctrl-C: stop Ray (its watchdog kills what outlives that), then say what was
    saved and the exact command that continues the sweep (exit status 130)."""

    from maxup import records
    from maxup.platform.interrupt import resume_words, stop_ray, trial_progress
    from maxup.platform.sweep import read_stored, statuses_of, sweep_layout

    stop_ray()
    layout = sweep_layout(storage, spec.name)
    stored = read_stored(trials, layout)
    status = statuses_of(stored)
    done = sum(s is records.Status.COMPLETED for s in status.values())
    failed = sum(s is records.Status.FAILED for s in status.values())
    stopped = [t for t in trials if status[t.trial_id] is records.Status.RUNNING]
    untouched = len(trials) - done - failed - len(stopped)
    say = [f"maxup: interrupted; sweep {spec.name}: {done} of {len(trials)} trials completed "
           f"and kept in {layout.results}"
           + (f", {failed} failed" if failed else "")
           + (f", {len(stopped)} stopped mid-run (record and checkpoint kept):" if stopped
              else "")]
    for t in stopped:
        got, after = trial_progress(layout.trial(t.trial_id).path)
        axes = ", ".join(f"{k}={v}" for k, v in t.axes.items())
        say.append(f"  {t.trial_id} ({axes}): "
                   f"{resume_words(got, after, t.config['train']['epochs'])}")
    say.append(f"{untouched} without a record yet (not started, or stopped in their first "
               f"epoch). Nothing of this sweep is left running. To continue: {command}")
    print("\n".join(say), file=sys.stderr, flush=True)
    return 130


def _check_storage(storage: str) -> None:
    """Refuse a --storage that cannot be one, before anything is read, started or written."""
    from maxup.errors import UsageError

    if "://" not in storage:
        from maxup.cli import check_output_dir

        check_output_dir("--storage", storage)
        return
    try:
        import pyarrow.fs

        pyarrow.fs.FileSystem.from_uri(storage)
    except (ValueError, OSError, ImportError) as exc:
        raise UsageError(f"--storage: {storage!r} cannot be opened ({exc}); allowed: a "
                         "directory, or a URI pyarrow reads (s3://, gs://, file://)") from None


def rerun_command(args: argparse.Namespace, overrides: dict) -> str:
    """The exact command that runs this sweep again from the same directory: the space, the
    storage, where it runs and every override (kept in the manifest, printed on Ctrl-C)."""
    import shlex

    from maxup.store import override_args

    parts = ["maxup", "sweep", shlex.quote(args.space), "--storage", shlex.quote(args.storage)]
    if args.address:
        parts += ["--address", shlex.quote(args.address)]
    if args.order != "longest-first":
        parts += ["--order", args.order]
    if args.mlflow:
        parts += ["--mlflow", shlex.quote(args.mlflow)]
    extra = override_args(overrides)
    return " ".join(parts) + (f" {extra}" if extra else "")


def _to_train(spec, trials, storage: str, rerun_failed: bool, stored: dict) -> list:
    """The trials a run would train (what the preflight checks), from the records read."""
    from maxup.platform.sweep import plan, statuses_of, sweep_layout

    layout = sweep_layout(storage, spec.name)
    return plan(spec, trials, layout, rerun_failed, statuses_of(stored))[0]


def local_gpus() -> float:
    """GPUs the embedded local Ray will see (:func:`maxup.platform.cost.local_gpu_count`)."""
    from maxup.platform.cost import local_gpu_count

    return local_gpu_count()


def print_plan(spec, trials, storage: str, cpus: float | None, gpus: float | None = None, *,
               needs_cluster: str | None = None, plan_for: str | None = None,
               address: str | None = None) -> None:
    from maxup.platform import plan
    from maxup.platform.space import max_concurrent, trial_cpus
    from maxup.platform.sweep import finished_records, read_stored, statuses_of, sweep_layout
    from maxup.records import Status

    axes = spec.varying_axes()
    widths = {a: max(len(a), *(len(str(t.axes[a])) for t in trials)) for a in axes}
    layout = sweep_layout(storage, spec.name)
    # Read once, and only: a dry run writes nothing, not even a local scratch copy of remote
    # records.
    read = read_stored(trials, layout, remote=True)
    stored = statuses_of(read)
    # Everything that can refuse (cluster file, profiles, local data) runs before any output.
    priced = plan.plan_and_price(spec, trials, stored, finished_records(read), cpus, gpus,
                                 needs_cluster=needs_cluster, plan_for=plan_for,
                                 address=address)
    problem = _preflight(trials, stored, local=priced is not None and priced[1])
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
    if needs_cluster is None:
        slots = max_concurrent(spec, trials, cpus or need * spec.concurrency,
                               gpus if gpus is not None
                               else spec.gpus_per_trial * spec.concurrency)
        print(f"resources: {need:g} CPU and {spec.gpus_per_trial:g} GPU per trial; "
              f"{slots} trial(s) at a time" + (f" on this machine's {cpus:g} CPUs" if cpus
                                               else ""))
    else:
        print(f"resources: {need:g} CPU and {spec.gpus_per_trial:g} GPU per trial; needs a "
              f"cluster, not this machine ({needs_cluster})")
    if priced is None:
        print("cost: give --plan-for cluster.yaml to price it for the cluster")
    else:
        _print_cost(spec, trials, priced[0])
    if problem is not None:
        print(f"preflight (checked on this machine; the cluster checks its own before "
              f"launch): {problem}")
    elif any(stored.get(t.trial_id) is not Status.COMPLETED for t in trials):
        print("preflight: data and weights files present"
              + ("" if priced is not None and priced[1] else
                 " here (the cluster checks its own before launch)"))


def _print_cost(spec, trials, priced) -> None:
    """The priced part of a dry run: where it is planned, per-arm cost, totals."""
    from maxup.platform import plan

    target = priced.target
    print(f"plan: {target.description}")
    for note in priced.notes:
        print(f"  note: {note}")
    print("estimated time per trial (submission order: longest first):")
    for line in plan.arm_lines(spec, priced):
        print(f"  {line}")
    print(plan.cost_line(spec, trials, priced))


def _preflight(trials, stored, local: bool) -> str | None:
    """Check the trials still to train: refuse (raise) when planned for this machine; for a
    cluster plan, return the problem seen here (the cluster checks its own before launch)."""
    from maxup.errors import UsageError
    from maxup.platform.preflight import preflight
    from maxup.records import Status

    todo = [t for t in trials if stored.get(t.trial_id) is not Status.COMPLETED]
    if not todo:
        return None
    if local:
        preflight(todo)
        return None
    try:
        preflight(todo)
    except UsageError as exc:
        return str(exc)
    return None


def _print_table(results: str) -> None:
    from maxup.cli.tables import run as run_tables

    print()
    run_tables(argparse.Namespace(results=str(results), table=None, format="md",
                                  vs_paper=False, out=None))
