"""Running a sweep on Ray Tune: one Tune trial per expanded trial, one durable record each.

Storage layout under the storage root ``STORAGE/`` (docs/records.md):

- ``trials/<trial_id>/`` — one trial, content-addressed by its trial id (:mod:`maxup.identity`)
  and shared by every sweep that plans it: ``record.json`` (the durable history), checkpoints,
  metrics, log, lock, and ``certify/<certification id>/`` shards;
- ``<sweep name>/sweep.json`` — the sweep's manifest: the trial ids it planned, with their axes
  and certification ids (what its table shows);
- ``<sweep name>/tune/`` — Ray Tune's own files (rewritten on restore; never the source of truth).

With a remote storage root (``s3://…``), trials work in a local scratch directory and the
durable files are mirrored to the URI (:mod:`maxup.platform.storage`).

Resume is driven by the records, not by Tune's experiment state (which Tune rewrites and
which would have to be unpickled): running a sweep against a storage skips every trial with a
completed record there — whichever sweep trained it — resumes interrupted ones from their last
checkpoint, and leaves failed ones alone unless ``rerun_failed``. Each trial holds an
exclusive lock on its directory while it trains, so no two processes ever train (or write the
record of) one trial, even when two sweeps share it.
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
    """Paths of one sweep inside its storage root (layout in docs/records.md).

    ``root`` is the sweep's own folder, ``STORAGE/<sweep name>`` (its manifest ``sweep.json``
    and Tune's files); trials are content-addressed beside it, ``STORAGE/trials/<trial_id>/``
    (record, checkpoints, log, lock, certification shards), so a trial shared by two sweeps
    is trained and stored once. ``remote`` (a URI or None) is the sweep folder's URI when the
    storage is remote; ``root`` is then its local scratch copy.
    """

    root: Path
    remote: str | None = None

    @property
    def storage(self) -> Path:
        """The local storage root that holds ``trials/`` and every sweep's folder."""
        return self.root.parent

    @property
    def manifest(self) -> Path:
        return self.root / "sweep.json"

    @property
    def results(self) -> str:
        """Where this sweep's results are read from (``maxup tables`` takes this)."""
        return self.remote or str(self.root)

    def _mirror(self):
        if self.remote is None:
            return None
        if not hasattr(self, "_mirror_obj"):
            from maxup.platform.storage import Mirror

            self._mirror_obj = Mirror(self.remote.rstrip("/").rsplit("/", 1)[0])
        return self._mirror_obj

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.storage).as_posix()

    def push(self, path: Path) -> None:
        """Copy a local file of this storage to the remote root (no-op when local)."""
        mirror = self._mirror()
        if mirror is not None and path.exists():
            mirror.put(path, self._rel(path))

    def pull(self, path: Path) -> bool:
        """Fetch a file of this storage from the remote root; False when absent there."""
        mirror = self._mirror()
        return mirror is not None and mirror.get(self._rel(path), path)

    def remote_source(self, path: Path) -> tuple[str, str] | None:
        """``(storage URI, relative path)`` of a local file's remote copy; None when local."""
        mirror = self._mirror()
        return None if mirror is None else (mirror.uri, self._rel(path))

    def pull_records(self, trial_ids: list[str]) -> None:
        """Refresh the local copies of these trials' records from the remote root."""
        if self._mirror() is not None:
            for tid in trial_ids:
                self.pull(self.record(tid))

    def record(self, trial_id: str) -> Path:
        return self.trial_dir(trial_id) / "record.json"

    def trial_dir(self, trial_id: str) -> Path:
        return self.storage / "trials" / trial_id


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


def stored_records(trials: list[Trial], layout: SweepLayout, *, remote: bool = False
                   ) -> dict[str, records.TrialRecord]:
    """Trial id -> the record the storage holds for it (trials without a readable one left out).

    Args:
        trials: the trials to look up.
        layout: the sweep's layout.
        remote: read the records from the remote storage root itself, writing nothing
            locally (a dry run); by default the local copies are read.
    """
    out: dict[str, records.TrialRecord] = {}
    mirror = layout._mirror() if remote else None
    for t in trials:
        if mirror is not None:
            data = mirror.read(layout._rel(layout.record(t.trial_id)))
            try:
                rec = None if data is None else records.parse_record(data)
            except records.RecordError:
                rec = None
        else:
            rec = records.load_record(layout.record(t.trial_id))
        if rec is not None:
            out[t.trial_id] = rec
    return out


def record_statuses(trials: list[Trial], layout: SweepLayout, *, remote: bool = False
                    ) -> dict[str, records.Status | None]:
    """Each trial's record status in storage (None: no readable record yet); arguments as
    :func:`stored_records`."""
    recs = stored_records(trials, layout, remote=remote)
    return {t.trial_id: recs[t.trial_id].status if t.trial_id in recs else None
            for t in trials}


def plan(spec: SweepSpec, trials: list[Trial], layout: SweepLayout, rerun_failed: bool,
         statuses: dict[str, records.Status | None] | None = None
         ) -> tuple[list[Trial], list[Trial]]:
    """Split trials into (to run, to skip) from the records already in storage.

    Args:
        statuses: :func:`record_statuses` when the caller already read them.
    """
    statuses = record_statuses(trials, layout) if statuses is None else statuses
    pending, skipped = [], []
    for t in trials:
        status = statuses[t.trial_id]
        if status is records.Status.COMPLETED or (status is records.Status.FAILED
                                                   and not rerun_failed):
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
        sweep: ``{"name", "paper_table", "cpus_per_worker", "mlflow"}`` (``cpus_per_worker``
            for sharded trials; ``mlflow``: a tracking URI or None).
        log_to: per-epoch reporter (Tune's report inside a Tune trial).
        remote: URI the durable files are mirrored to, or None.
    """
    from maxup.engine import train

    layout = SweepLayout(Path(layout_root), remote)
    tid, config = trial["trial_id"], trial["config"]
    trial_dir = layout.trial_dir(tid)
    trial_dir.mkdir(parents=True, exist_ok=True)
    extra = {"sweep": sweep["name"], "axes": trial["axes"], "paper_table": sweep["paper_table"]}
    # The device's name lets later plans refine their estimates with this trial's epoch times.
    from maxup.platform.cost import local_device

    extra["environment"] = {"device_name": local_device(config["train"]["device"] != "cpu")[0]}
    record_path, checkpoint = layout.record(tid), trial_dir / "checkpoints" / "last.pt"
    views = _views(trial_dir, trial, sweep.get("mlflow"))

    def push_views() -> None:
        for f in views.files() if views is not None else []:
            layout.push(f)

    def report(metrics: dict, checkpoint_dir) -> None:
        layout.push(record_path)
        if checkpoint_dir is not None:
            layout.push(checkpoint)
        if views is not None:
            views.log(metrics)
            push_views()
        if log_to is not None:
            log_to(metrics, checkpoint_dir)

    with open(trial_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits for any stray process still on this trial
        if remote is not None and not checkpoint.exists():
            layout.pull(record_path)  # this node may not have trained the trial before
            layout.pull(checkpoint)
        done = records.load_record(record_path)
        if done is not None and done.completed:
            return done.to_dict()
        try:
            if config["train"]["workers"] > 1:
                from maxup.platform.distributed import train_distributed

                record = train_distributed(config, trial_dir, resume=True,
                                           cpus_per_worker=sweep.get("cpus_per_worker", 1.0),
                                           record_path=record_path, record_extra=extra,
                                           reporter=log_to)
                if views is not None:  # the workers report to Tune only: curves at the end
                    views.log_history(record.get("history") or [])
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
            if views is not None:
                rec = records.load_record(record_path)
                views.close(None if rec is None else str(rec.status))
                push_views()
            layout.push(record_path)
            layout.push(checkpoint)


def _views(trial_dir: Path, trial: dict, mlflow_uri: str | None):
    """The trial's TensorBoard (and MLflow) writer; None when tensorboard is not installed."""
    try:
        from maxup.platform.views import TrialViews

        return TrialViews(trial_dir, trial["trial_id"], trial["axes"], trial["config"],
                          mlflow_uri)
    except ImportError:
        return None


def _tune_trial(config: dict, trials: dict, layout_root: str, sweep: dict, cpus: float,
                remote: str | None = None) -> None:
    """The Tune function trainable: look the trial up by id and run it."""
    import torch
    from ray import tune

    # This runs in a Ray worker process that exists for this trial: its thread setting is
    # ours to choose (the engine itself never changes thread settings).
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
        root = str(storage).rstrip("/")
        return SweepLayout(scratch_root(root) / name, f"{root}/{name}")
    return SweepLayout(Path(storage).resolve() / name)


def write_manifest(spec: SweepSpec, trials: list[Trial], layout: SweepLayout) -> None:
    """Write (and mirror) the sweep's manifest: what it planned, for its table and tools.

    Each trial entry carries its trial and arm ids, its axes (seed included) and, when it is
    to be certified, its certification id and settings: a trial shared with another sweep
    shows in this sweep's table with this sweep's axes and certification.
    """
    from maxup import identity

    entries = []
    for t in trials:
        entry = {"trial_id": t.trial_id, "arm_id": identity.arm_id(t.config), "axes": t.axes}
        if t.config["certify"]["enabled"]:
            entry["certification_id"] = identity.certification_id(t.config)
            entry["certify"] = t.config["certify"]
        entries.append(entry)
    atomic_write_json(layout.manifest, {
        "schema": records.MANIFEST_SCHEMA, "name": spec.name, "description": spec.description,
        "paper_table": spec.paper_table, "source": spec.source, "axes": spec.varying_axes(),
        "trials_root": "../trials", "trials": entries,
    })
    layout.push(layout.manifest)


def run_sweep(spec: SweepSpec, trials: list[Trial], storage: str | Path, *,
              address: str | None = None, rerun_failed: bool = False,
              echo: Callable[[str], None] = print, verbose: bool = False,
              order: str = "longest_first", mlflow: str | None = None) -> SweepSummary:
    """Run the sweep's pending trials on Ray Tune and return how each ended.

    Args:
        spec: the parsed search space.
        trials: its expanded trials (``spec.expand()``).
        storage: root directory; the sweep lives in ``storage/<spec.name>``.
        address: Ray cluster address (None: embedded local Ray).
        rerun_failed: run trials whose record says failed again.
        echo: where progress lines go.
        verbose: also print Tune's status table every 30 s and a line per trial start.
        order: ``longest_first`` (pending trials submitted in decreasing estimated cost,
            seeds of an arm spread where costs tie) or ``given`` (the order of ``trials``).
        mlflow: MLflow tracking URI each trial also logs to (:mod:`maxup.platform.views`).
    """
    t_start = time.perf_counter()
    layout = sweep_layout(storage, spec.name)
    layout.pull_records([t.trial_id for t in trials])
    statuses = record_statuses(trials, layout)
    pending, skipped = plan(spec, trials, layout, rerun_failed, statuses)
    # Priced before anything is written: a corrupt profile is refused with nothing changed.
    from maxup.platform.plan import run_estimates

    estimates = run_estimates(spec, pending, layout, remote=address is not None)
    if order == "longest_first":
        from maxup import identity
        from maxup.platform.cost import longest_first

        idx = longest_first(pending, [estimates[t.trial_id] for t in pending],
                            [identity.arm_id(t.config) for t in pending])
        pending = [pending[i] for i in idx]
    summary = SweepSummary(skipped=[t.trial_id for t in skipped])
    summary.failed_before = [t.trial_id for t in skipped
                             if statuses[t.trial_id] is records.Status.FAILED]
    write_manifest(spec, trials, layout)
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

    from maxup.platform.progress import SweepProgress, status_reporter

    if address is not None:
        from maxup.platform.preflight import preflight_remote

        problem = preflight_remote(pending, {"num_cpus": min(spec.cpus_per_trial, 1.0),
                                             "num_gpus": spec.gpus_per_trial})
        if problem is not None:
            from maxup.errors import UsageError

            raise UsageError(f"{problem} (checked on the cluster; no trial started)")
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
                             sweep={"name": spec.name, "paper_table": spec.paper_table,
                                    "cpus_per_worker": spec.cpus_per_worker,
                                    "mlflow": mlflow},
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
            callbacks=[SweepProgress(layout, echo, {t.trial_id: estimates[t.trial_id]
                                                    for t in pending}, slots,
                                     verbose=verbose)],
            verbose=1 if verbose else 0,
        ),
    )
    tuner.fit()
    layout.pull_records([t.trial_id for t in pending])  # trials on other nodes wrote theirs
    _certify_phase(spec, trials, layout, address, echo)
    summary.wall_s = time.perf_counter() - t_start
    return _finish(summary, pending, layout, echo)


def _certify_phase(spec: SweepSpec, trials: list[Trial], layout: SweepLayout,
                   address: str | None, echo: Callable[[str], None]) -> None:
    """Certify trained models that need it, as sharded Ray tasks (see certification.py)."""
    from maxup.platform.certification import needing_certification, run_certification

    todo = needing_certification(layout, trials)
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
        rec = records.load_record(layout.record(t.trial_id))
        status = None if rec is None else rec.status
        {records.Status.COMPLETED: summary.completed, records.Status.FAILED: summary.failed}.get(
            status, summary.interrupted).append(t.trial_id)
    echo(f"sweep finished in {summary.wall_s:.0f}s: {summary.line()}")
    for tid in summary.failed:
        rec = records.load_record(layout.record(tid))
        echo(f"  FAILED {tid}: {((rec.failure if rec else None) or {}).get('reason')}")
    return summary
