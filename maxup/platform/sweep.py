"""Running a sweep on Ray Tune: one Tune trial per expanded trial, one durable record each.

Storage layout under ``STORAGE/<sweep name>/``:

- ``records/<trial_id>.json`` — the trial's record (docs/records.md): the durable history;
- ``trials/<trial_id>/`` — the run directory (checkpoints, metrics, log, lock);
- ``tune/`` — Ray Tune's own experiment files (rewritten on restore; never the source of truth);
- ``sweep.json`` — the expanded sweep (trial ids, axes, seeds) for humans and tools.

With a remote storage root (``s3://…``), trials work in a local scratch directory and the
durable files are mirrored to the URI (:mod:`maxup.platform.storage`).

Resume is driven by the records, not by Tune's experiment state (which Tune rewrites and
which would have to be unpickled): running the same file against the same storage skips
trials with a completed record, resumes interrupted ones from their last checkpoint, and
leaves failed ones alone unless ``rerun_failed``. Each trial holds an exclusive lock on its
directory while it trains, so no two processes ever train (or write the record of) one trial.
"""

from __future__ import annotations

import fcntl
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from maxup import records
from maxup.io import atomic_write_json
from maxup.platform.space import SweepSpec, Trial, max_concurrent, trial_cpus

#: Metrics forwarded to Tune each epoch (Tune's status table shows epoch and test_acc).
_TUNE_METRICS = ("epoch", "train_loss", "test_loss", "test_acc", "lr", "wall_s")
REPORT_INTERVAL_S = 2.0


@dataclass
class SweepLayout:
    """Paths of one sweep: ``root`` is local; ``remote`` (a URI or None) mirrors it."""

    root: Path
    remote: str | None = None

    @property
    def records(self) -> Path:
        return self.root / "records"

    @property
    def results(self) -> str:
        """Where the durable results are read from (``maxup tables`` takes this)."""
        return self.remote or str(self.root)

    def _mirror(self):
        if self.remote is None:
            return None
        if not hasattr(self, "_mirror_obj"):
            from maxup.platform.storage import Mirror

            self._mirror_obj = Mirror(self.remote)
        return self._mirror_obj

    def push(self, path: Path) -> None:
        """Copy a local file of this sweep to the remote root (no-op when local)."""
        mirror = self._mirror()
        if mirror is not None and path.exists():
            mirror.put(path, path.relative_to(self.root).as_posix())

    def pull(self, path: Path) -> bool:
        """Fetch a file of this sweep from the remote root; False when absent there."""
        mirror = self._mirror()
        return mirror is not None and mirror.get(path.relative_to(self.root).as_posix(), path)

    def pull_records(self) -> None:
        """Refresh the local copies of all records from the remote root."""
        mirror = self._mirror()
        if mirror is not None:
            for name in mirror.list("records"):
                mirror.get(f"records/{name}", self.records / name)

    def record(self, trial_id: str) -> Path:
        return self.records / f"{trial_id}.json"

    def trial_dir(self, trial_id: str) -> Path:
        return self.root / "trials" / trial_id


@dataclass
class SweepSummary:
    """How a sweep ended, trial by trial."""

    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed_before: list[str] = field(default_factory=list)  # skipped, record says failed
    wall_s: float = 0.0

    def line(self) -> str:
        before = (f", of which {len(self.failed_before)} failed before (run again with "
                  "--rerun-failed)" if self.failed_before else "")
        return (f"completed {len(self.completed)}, failed {len(self.failed)}, "
                f"interrupted {len(self.interrupted)}, skipped (already done) "
                f"{len(self.skipped)}{before}")

    @property
    def ok(self) -> bool:
        """True when every trial of the sweep has a completed record."""
        return not (self.failed or self.failed_before or self.interrupted)


def record_statuses(trials: list[Trial], layout: SweepLayout) -> dict[str, str | None]:
    """Each trial's record status in storage (None: no readable record yet)."""
    return {t.trial_id: (records.read_record(layout.record(t.trial_id)) or {}).get("status")
            for t in trials}


def plan(spec: SweepSpec, trials: list[Trial], layout: SweepLayout, rerun_failed: bool,
         statuses: dict[str, str | None] | None = None) -> tuple[list[Trial], list[Trial]]:
    """Split trials into (to run, to skip) from the records already in storage.

    Args:
        statuses: :func:`record_statuses` when the caller already read them.
    """
    statuses = record_statuses(trials, layout) if statuses is None else statuses
    pending, skipped = [], []
    for t in trials:
        status = statuses[t.trial_id]
        if status == "completed" or (status == "failed" and not rerun_failed):
            skipped.append(t)
        else:
            pending.append(t)
    return pending, skipped


# --------------------------------------------------------------------------- inside a trial

def run_trial(trial: dict, layout_root: str, sweep: dict, log_to: Callable | None = None,
              remote: str | None = None) -> dict:
    """Train one trial (engine in-process, or sharded through Ray Train) and keep its record.

    Args:
        trial: ``{"trial_id", "config", "axes", "seed"}``.
        layout_root: the sweep's local root (scratch directory when ``remote`` is set).
        sweep: ``{"name", "paper_table"}``.
        log_to: per-epoch reporter (Tune's report inside a Tune trial).
        remote: URI the durable files are mirrored to, or None.
    """
    from maxup.engine import train

    layout = SweepLayout(Path(layout_root), remote)
    tid, config = trial["trial_id"], trial["config"]
    trial_dir = layout.trial_dir(tid)
    trial_dir.mkdir(parents=True, exist_ok=True)
    extra = {"sweep": sweep["name"], "axes": trial["axes"], "paper_table": sweep["paper_table"]}
    record_path, checkpoint = layout.record(tid), trial_dir / "checkpoints" / "last.pt"

    def report(metrics: dict, checkpoint_dir) -> None:
        layout.push(record_path)
        if checkpoint_dir is not None:
            layout.push(checkpoint)
        if log_to is not None:
            log_to(metrics, checkpoint_dir)

    with open(trial_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits for any stray process still on this trial
        if remote is not None and not checkpoint.exists():
            layout.pull(record_path)  # this node may not have trained the trial before
            layout.pull(checkpoint)
        done = records.read_record(record_path)
        if done and done["status"] == "completed":
            return done
        try:
            if config["train"]["workers"] > 1:
                from maxup.platform.distributed import train_distributed

                record = train_distributed(config, trial_dir, resume=True,
                                           record_path=record_path, record_extra=extra,
                                           reporter=log_to)
            else:
                with open(trial_dir / "log.txt", "a") as fh:
                    def log(line: str) -> None:
                        fh.write(line + "\n")
                        fh.flush()

                    record = train(config, trial_dir, reporter=report, resume=True,
                                   record_path=record_path, record_extra=extra, log=log)
            return record
        except Exception as exc:
            records.mark_failed(record_path, config=config, extra=extra,
                                reason=f"{type(exc).__name__}: {exc}",
                                detail=traceback.format_exc(limit=5))
            raise
        finally:
            layout.push(record_path)
            layout.push(checkpoint)


def _tune_trial(config: dict, trials: dict, layout_root: str, sweep: dict, cpus: float,
                remote: str | None = None) -> None:
    """The Tune function trainable: look the trial up by id and run it."""
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(cpus)))
    trial = trials[config["trial"]["id"]]

    epochs = trial["config"]["train"]["epochs"]
    last = [float("-inf")]

    def report(metrics: dict, _checkpoint_dir) -> None:
        # Each tune.report waits for the driver to take the result; for short epochs that
        # round trip adds up, so Tune (a progress display only: the record is the history)
        # hears at most once per REPORT_INTERVAL_S, and always of the last epoch.
        now = time.monotonic()
        if now - last[0] >= REPORT_INTERVAL_S or metrics["epoch"] == epochs:
            last[0] = now
            tune.report({k: metrics[k] for k in _TUNE_METRICS if metrics.get(k) is not None})

    run_trial(trial, layout_root, sweep, log_to=report, remote=remote)
    # Nothing returned: a returned dict would become an extra result row.


# --------------------------------------------------------------------------- the driver

def _trial_payload(t: Trial) -> dict:
    return {"trial_id": t.trial_id, "config": t.config, "axes": t.axes, "seed": t.seed}


def start_ray(address: str | None, start_timeout_s: float = 60.0) -> tuple[float, float]:
    """Join a cluster (``address``) or start an embedded local one; returns (CPUs, GPUs).

    Args:
        address: ``auto`` or ``HOST:PORT`` of a running cluster; None for an embedded,
            private local Ray (:func:`maxup.platform.distributed.start_local_ray`).
        start_timeout_s: how long a Ray Train worker group may take to start.
    """
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            from maxup.platform.distributed import start_local_ray

            start_local_ray(start_timeout_s)
    res = ray.cluster_resources()
    return float(res.get("CPU", 0)), float(res.get("GPU", 0))


def sweep_layout(storage: str | Path, name: str) -> SweepLayout:
    """The layout of sweep ``name`` under a local directory or a remote URI."""
    from maxup.platform.storage import is_remote, scratch_root

    if is_remote(str(storage)):
        remote = f"{str(storage).rstrip('/')}/{name}"
        return SweepLayout(scratch_root(remote), remote)
    return SweepLayout(Path(storage).resolve() / name)


def run_sweep(spec: SweepSpec, trials: list[Trial], storage: str | Path, *,
              address: str | None = None, rerun_failed: bool = False,
              echo: Callable[[str], None] = print) -> SweepSummary:
    """Run the sweep's pending trials on Ray Tune and return how each ended.

    Args:
        spec: the parsed search space.
        trials: its expanded trials (``spec.expand()``), in run order.
        storage: root directory; the sweep lives in ``storage/<spec.name>``.
        address: Ray cluster address (None: embedded local Ray).
        rerun_failed: run trials whose record says failed again.
        echo: where progress lines go.
    """
    t_start = time.perf_counter()
    layout = sweep_layout(storage, spec.name)
    layout.pull_records()
    statuses = record_statuses(trials, layout)
    pending, skipped = plan(spec, trials, layout, rerun_failed, statuses)
    summary = SweepSummary(skipped=[t.trial_id for t in skipped])
    summary.failed_before = [t.trial_id for t in skipped if statuses[t.trial_id] == "failed"]
    layout.records.mkdir(parents=True, exist_ok=True)
    atomic_write_json(layout.root / "sweep.json", {
        "name": spec.name, "description": spec.description, "paper_table": spec.paper_table,
        "source": spec.source, "axes": spec.varying_axes(),
        "trials": [{"trial_id": t.trial_id, "axes": t.axes} for t in trials],
    })
    layout.push(layout.root / "sweep.json")
    if skipped:
        echo(f"skipping {len(skipped)} trial(s) with a completed"
             f"{'' if rerun_failed else ' or failed'} record")
    if not pending:
        _certify_phase(spec, trials, layout, address, echo)
        summary.wall_s = time.perf_counter() - t_start
        return _finish(summary, trials, layout, echo)

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # use the classic table reporter below
    cpus, gpus = start_ray(address, max(t.config["train"]["start_timeout_s"] for t in pending))
    from ray import tune

    from maxup.platform.progress import StartFinishLines, status_reporter

    slots = max_concurrent(spec, pending, cpus, gpus)
    sharded = any(t.config["train"]["workers"] > 1 for t in pending)
    per_trial = trial_cpus(spec, pending[0].config)
    # A sharded trial's Tune actor only coordinates: its Ray Train workers hold the CPUs in
    # their own placement group, which Tune does not count. The actor must ask for no CPU at
    # all (even 0.001 CPU leaves too little for workers that fill the machine exactly, and
    # they would wait forever); one byte of memory is the smallest request Ray accepts.
    resources = ({"cpu": 0, "memory": 1} if sharded
                 else {"cpu": per_trial, "gpu": spec.gpus_per_trial})
    echo(f"sweep {spec.name}: {len(pending)} trial(s) to run, {slots} at a time "
         f"({per_trial:g} CPU each, cluster {cpus:g} CPU / {gpus:g} GPU)")
    payload = {t.trial_id: _trial_payload(t) for t in pending}
    trainable = tune.with_resources(
        tune.with_parameters(_tune_trial, trials=payload, layout_root=str(layout.root),
                             sweep={"name": spec.name, "paper_table": spec.paper_table},
                             cpus=per_trial, remote=layout.remote),
        resources)
    axes = spec.varying_axes()
    grid = [{"id": t.trial_id, **{a: str(t.axes[a]) for a in axes}} for t in pending]
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(grid)},
        tune_config=tune.TuneConfig(max_concurrent_trials=slots, reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"run-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=f"{layout.remote}/tune" if layout.remote else str(layout.root / "tune"),
            failure_config=tune.FailureConfig(max_failures=spec.retries),
            progress_reporter=status_reporter(axes),
            callbacks=[StartFinishLines(layout, echo)],
            verbose=1,
        ),
    )
    tuner.fit()
    layout.pull_records()  # trials on other nodes wrote theirs there
    _certify_phase(spec, trials, layout, address, echo)
    summary.wall_s = time.perf_counter() - t_start
    return _finish(summary, pending, layout, echo)


def _certify_phase(spec: SweepSpec, trials: list[Trial], layout: SweepLayout,
                   address: str | None, echo: Callable[[str], None]) -> None:
    """Certify trained models that need it, as sharded Ray tasks (see certification.py)."""
    from maxup.platform.certification import needing_certification, run_certification

    todo = needing_certification(
        layout, [t.trial_id for t in trials if t.config["certify"]["enabled"]])
    if not todo:
        return  # nothing to certify: Ray is not even started
    cpus, gpus = start_ray(address)
    slots = max_concurrent(spec, trials, cpus, gpus)
    run_certification(layout, todo, shards=slots, cpus=max(spec.cpus_per_trial, 1.0),
                      gpus=spec.gpus_per_trial, echo=echo)


def _finish(summary: SweepSummary, trials: list[Trial], layout: SweepLayout,
            echo: Callable[[str], None]) -> SweepSummary:
    for t in trials:
        if t.trial_id in summary.skipped:
            continue
        rec = records.read_record(layout.record(t.trial_id))
        status = rec["status"] if rec else None
        {"completed": summary.completed, "failed": summary.failed}.get(
            status, summary.interrupted).append(t.trial_id)
    echo(f"sweep finished in {summary.wall_s:.0f}s: {summary.line()}")
    for tid in summary.failed:
        rec = records.read_record(layout.record(tid)) or {}
        echo(f"  FAILED {tid}: {(rec.get('failure') or {}).get('reason')}")
    return summary
