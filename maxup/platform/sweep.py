"""Running a sweep on Ray Tune: one Tune trial per expanded trial, one durable record each.

The storage layout (each trial once under ``STORAGE/trials/<trial_id>/``, shared by every
sweep that plans it; each sweep's manifest and Tune's own files under ``STORAGE/<sweep>/``),
who writes what and what a reader may assume are :mod:`maxup.store`'s contract.

With a remote storage root (``s3://…``), trials work in a local scratch directory and the
durable files are mirrored to the URI (:func:`maxup.platform.storage.scratch_root`).

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

from maxup import records, store
from maxup.errors import UsageError
from maxup.io import atomic_write_bytes
from maxup.platform import interrupt
from maxup.platform.space import SweepSpec, Trial, max_concurrent, trial_cpus

#: Metrics forwarded to Tune each epoch (Tune's status table shows epoch and test_acc).
_TUNE_METRICS = ("epoch", "train_loss", "test_loss", "test_acc", "lr", "wall_s")
REPORT_INTERVAL_S = 2.0


@dataclass
class SweepLayout:
    """One sweep inside its storage root (the layout is :mod:`maxup.store`'s).

    ``root`` is the sweep's own folder, ``STORAGE/<sweep name>`` (its manifest and Tune's
    files); trials are content-addressed beside it, ``STORAGE/trials/<trial_id>/``, so a
    trial shared by two sweeps is trained and stored once. ``remote`` (a URI or None) is the
    sweep folder's URI when the storage is remote; ``root`` is then its local scratch copy.
    """

    root: Path
    remote: str | None = None
    reads: int = 0  # record files read through read_trials (what tests count)

    @property
    def storage(self) -> Path:
        """The local storage root that holds ``trials/`` and every sweep's folder."""
        return self.root.parent

    @property
    def manifest(self) -> Path:
        return self.root / store.MANIFEST

    @property
    def results(self) -> str:
        """Where this sweep's results are read from (``maxup tables`` takes this)."""
        return self.remote or str(self.root)

    def _mirror(self) -> store.Storage | None:
        """The remote storage root (None for a local storage)."""
        if self.remote is None:
            return None
        if not hasattr(self, "_mirror_obj"):
            self._mirror_obj = store.Storage(self.remote.rstrip("/").rsplit("/", 1)[0])
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
        return None if mirror is None else (mirror.root, self._rel(path))

    def trial(self, trial_id: str) -> store.TrialDir:
        """Every local file of one trial."""
        return store.TrialDir(self.storage / store.TRIALS / trial_id)

    def record(self, trial_id: str) -> Path:
        return self.trial(trial_id).record

    def trial_dir(self, trial_id: str) -> Path:
        return self.trial(trial_id).path

    def read_trials(self, trial_ids, *, remote: bool = False, pull: bool = False
                    ) -> dict[str, store.StoredTrial]:
        """Each trial's stored state, each record read once (:func:`maxup.store.classify`).

        Args:
            trial_ids: the trials to read.
            remote: read a remote storage's records from the URI itself, writing nothing
                locally (a dry run); by default the local copies are read.
            pull: read from the URI and keep each record as the local copy (a sweep about
                to run, or one that just ran on other nodes).
        """
        mirror = self._mirror() if (remote or pull) else None
        local = store.Storage(self.storage)
        out: dict[str, store.StoredTrial] = {}
        for tid in trial_ids:
            if tid in out:
                continue
            self.reads += 1
            if mirror is None:
                out[tid] = local.read_trial(tid)
                continue
            rel = store.record_rel(tid)
            data = mirror.read(rel)
            if pull and data is not None:
                atomic_write_bytes(self.record(tid), data)
            out[tid] = store.classify(data, mirror.shown(rel), tid)
        return out


def statuses_of(stored: dict[str, store.StoredTrial]) -> dict[str, records.Status | None]:
    """Trial id -> its record's status (None: no usable record, so it is to train)."""
    return {tid: None if st.record is None else st.record.status for tid, st in stored.items()}


def finished_records(stored: dict[str, store.StoredTrial]) -> list[records.TrialRecord]:
    """The usable records among ``stored`` (what refines cost estimates)."""
    return [st.record for st in stored.values() if st.record is not None]


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


def plan(spec: SweepSpec, trials: list[Trial], layout: SweepLayout, rerun_failed: bool,
         statuses: dict[str, records.Status | None] | None = None
         ) -> tuple[list[Trial], list[Trial]]:
    """Split trials into (to run, to skip) from the records already in storage.

    Args:
        statuses: :func:`statuses_of` the records, when the caller already read them.
    """
    if statuses is None:
        statuses = statuses_of(layout.read_trials(t.trial_id for t in trials))
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
    files = layout.trial(tid)
    record_path, checkpoint = files.record, files.checkpoint
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

    with open(files.lock, "w") as lock:
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
                with open(files.log, "a") as fh:
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
    from maxup.platform.storage import scratch_root

    if store.is_remote(str(storage)):
        root = str(storage).rstrip("/")
        return SweepLayout(scratch_root(root) / name, f"{root}/{name}")
    return SweepLayout(Path(storage).resolve() / name)


def write_manifest(spec: SweepSpec, trials: list[Trial], layout: SweepLayout,
                   command: str | None = None) -> None:
    """Write (and mirror) the sweep's manifest (:class:`maxup.store.SweepManifest`): what it
    planned, each trial with its ids, axes, config and, when certified, its certification:
    a trial shared with another sweep shows in this sweep's table with this sweep's axes and
    certification, and a trial not run yet keeps its arm's row. It also stores the space's
    command-line overrides (``spec.overrides``) and ``command``, the exact command that runs
    the sweep again."""
    manifest = store.SweepManifest.plan(
        name=spec.name, trials=trials, description=spec.description,
        paper_table=spec.paper_table, source=spec.source, axes=spec.varying_axes(),
        overrides=spec.overrides, command=command)
    store.Storage(layout.storage).write_manifest(manifest)
    layout.push(layout.manifest)


def stored_manifest(storage: str | Path, name: str) -> store.SweepManifest | None:
    """Sweep ``name``'s manifest in ``storage`` (a path or URI); None when there is none or it
    does not parse (a manifest is a plan, rewritten by the next run; the records are kept)."""
    try:
        return store.Storage(str(storage)).read_manifest(name)
    except store.ManifestError:
        return None


def plan_difference(manifest: store.SweepManifest | None, trials: list[Trial],
                    where: str = "") -> str | None:
    """How the trials planned now differ from a stored manifest's (at ``where``), in words;
    None when they are the same trials (or there is no manifest)."""
    if manifest is None:
        return None
    before = {e.trial_id for e in manifest.trials}
    now = {t.trial_id for t in trials}
    if before == now:
        return None
    at = f" {where}" if where else ""
    return (f"{len(now)} trials, {len(now - before)} of them not in the manifest{at}, which plans "
            f"{len(before)} ({len(before - now)} not planned now)")


def refuse_replan(spec: SweepSpec, manifest: store.SweepManifest, difference: str
                  ) -> UsageError:
    """The one-line refusal of a run whose plan differs from its sweep's manifest."""
    given = store.override_args(spec.overrides) or "none"
    stored = manifest.override_args() or "none"
    again = f" (run: {manifest.command})" if manifest.command else ""
    return UsageError(
        f"sweep {spec.name}: got a plan of {difference} (overrides now: {given}; in "
        f"the manifest: {stored}); allowed: the manifest's plan{again}, or --replan to "
        "replace the manifest with this plan (stored records are kept)")


def run_sweep(spec: SweepSpec, trials: list[Trial], storage: str | Path, *,
              address: str | None = None, rerun_failed: bool = False,
              echo: Callable[[str], None] = print, verbose: bool = False,
              order: str = "longest_first", mlflow: str | None = None,
              stored: dict[str, store.StoredTrial] | None = None,
              command: str | None = None, last_line_at: float | None = None) -> SweepSummary:
    """Run the sweep's pending trials on Ray Tune and return how each ended.

    Each record is read once before training (``stored``, or here) and that one reading
    decides what is skipped, what the estimates learn from and what is certified without
    training; the trials that trained are read once more when they have ended.

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
        stored: :func:`read_stored` of these trials when the caller already read them.
        command: the command that runs this sweep again (kept in the manifest).
        last_line_at: when the caller last printed (``time.monotonic()``): the periodic
            status line (at least every 10 s) counts from there.
    """
    from maxup.platform.liveness import Heartbeat

    phase = {"what": "reading the records", "since": time.monotonic(), "progress": None}

    def describe(_silent: float) -> str:
        if phase["progress"] is not None:
            return phase["progress"].heartbeat()
        return f"... {phase['what']} ({time.monotonic() - phase['since']:.0f} s)"

    beat = Heartbeat(describe, echo, last_line_at=last_line_at)
    say = echo

    def echo(line: str) -> None:
        say(line)
        beat.printed()

    with beat:
        return _run_sweep(spec, trials, storage, address=address, rerun_failed=rerun_failed,
                          echo=echo, verbose=verbose, order=order, mlflow=mlflow,
                          stored=stored, command=command, phase=phase,
                          on_line=beat.printed)


def _run_sweep(spec: SweepSpec, trials: list[Trial], storage: str | Path, *, address, rerun_failed,
               echo, verbose, order, mlflow, stored, command, phase: dict,
               on_line: Callable[[], None]) -> SweepSummary:
    t_start = time.perf_counter()
    layout = sweep_layout(storage, spec.name)
    if stored is None:
        stored = read_stored(trials, layout)
    for st in stored.values():
        if st.problem is not None and st.problem.kind == store.CORRUPT:
            echo(f"note: {st.problem}; the trial is trained again")
    statuses = statuses_of(stored)
    pending, skipped = plan(spec, trials, layout, rerun_failed, statuses)
    # Priced before anything is written: a corrupt profile is refused with nothing changed.
    from maxup.platform.plan import run_estimates

    estimates = run_estimates(spec, pending, finished_records(
        {t.trial_id: stored[t.trial_id] for t in pending}), remote=address is not None)
    if order == "longest_first":
        from maxup import identity
        from maxup.platform.cost import longest_first

        idx = longest_first(pending, [estimates[t.trial_id] for t in pending],
                            [identity.arm_id(t.config) for t in pending])
        pending = [pending[i] for i in idx]
    summary = SweepSummary(skipped=[t.trial_id for t in skipped])
    summary.failed_before = [t.trial_id for t in skipped
                             if statuses[t.trial_id] is records.Status.FAILED]
    write_manifest(spec, trials, layout, command)
    if skipped:
        echo(f"skipping {len(skipped)} trial(s) with a completed"
             f"{'' if rerun_failed else ' or failed'} record")
    if not pending:
        _certify_phase(spec, trials, layout, address, echo, stored)
        summary.wall_s = time.perf_counter() - t_start
        return _finish(summary, trials, stored, echo)

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # use the classic table reporter below
    # Tune's own CSV/JSON/TensorBoard loggers write result files nobody reads back (the
    # records are the history) and a second TensorBoard run per trial, named
    # `_tune_trial_…`, beside the trial's own (issue 27): off.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    phase.update(what=f"joining the Ray cluster at {address}" if address
                 else "starting the embedded local Ray", since=time.monotonic())
    echo(f"sweep {spec.name}: {len(pending)} trial(s) to train; {phase['what']}")
    cpus, gpus = start_ray(address, max(t.config["train"]["start_timeout_s"] for t in pending))
    interrupt.check()  # a Ctrl-C during Ray's start-up may have been swallowed there
    from maxup.platform.progress import SweepProgress

    if address is not None:
        from maxup.platform.preflight import preflight_remote

        problem = preflight_remote(pending, {"num_cpus": min(spec.cpus_per_trial, 1.0),
                                             "num_gpus": spec.gpus_per_trial})
        if problem is not None:
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
    todo = pending
    for attempt in range(1 + (RESCUE_PASSES if spec.retries > 0 else 0)):
        if attempt:
            echo(f"sweep {spec.name}: {len(todo)} trial(s) ended without a final record after "
                 f"Tune's retries (a node or worker was lost); pass {attempt + 1} resumes them "
                 "from their checkpoints")
        phase.update(what="starting the trials", since=time.monotonic())
        progress = SweepProgress(layout, echo, {t.trial_id: estimates[t.trial_id] for t in todo},
                                 slots, verbose=verbose, on_line=on_line,
                                 epochs={t.trial_id: t.config["train"]["epochs"] for t in todo})
        phase["progress"] = progress
        _tune_pass(spec, todo, layout, progress, slots=slots, resources=resources,
                   per_trial=per_trial, mlflow=mlflow, verbose=verbose, attempt=attempt)
        phase.update(progress=None, what="reading the trials' records", since=time.monotonic())
        interrupt.check()
        # The trials that trained changed their records (on other nodes too): read them again.
        stored = {**stored, **layout.read_trials([t.trial_id for t in todo], pull=True)}
        todo = [t for t in todo if _lost(stored[t.trial_id])]
        if not todo:
            break
    _certify_phase(spec, trials, layout, address, echo, stored)
    summary.wall_s = time.perf_counter() - t_start
    return _finish(summary, pending, stored, echo)


#: Extra passes over trials that Tune gave up on without their run ending (its retries can
#: all land on a node that has died but is not yet known dead): see docs/reliability.md.
RESCUE_PASSES = 1


def _lost(st: store.StoredTrial) -> bool:
    """A trial whose run neither completed nor failed: its process or node died under it."""
    rec = st.record
    return rec is None or rec.status not in (records.Status.COMPLETED, records.Status.FAILED)


def _tune_pass(spec: SweepSpec, todo: list[Trial], layout: SweepLayout, progress, *,
               slots: int, resources: dict, per_trial: float, mlflow: str | None,
               verbose: bool, attempt: int) -> None:
    """One Tune run over ``todo``: each trial resumes from its checkpoint when it has one."""
    from ray import tune

    from maxup.platform.progress import status_reporter

    payload = {t.trial_id: _trial_payload(t) for t in todo}
    trainable = tune.with_resources(
        tune.with_parameters(_tune_trial, trials=payload, layout_root=str(layout.root),
                             sweep={"name": spec.name, "paper_table": spec.paper_table,
                                    "cpus_per_worker": spec.cpus_per_worker,
                                    "mlflow": mlflow},
                             cpus=per_trial, remote=layout.remote),
        resources)
    axes = spec.varying_axes()
    grid = [{"id": t.trial_id, **{a: str(t.axes[a]) for a in axes}} for t in todo]
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(grid)},
        tune_config=tune.TuneConfig(max_concurrent_trials=slots, reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"run-{time.strftime('%Y%m%d-%H%M%S')}" + (f"-pass{attempt + 1}" if attempt
                                                            else ""),
            storage_path=f"{layout.remote}/tune" if layout.remote else str(layout.root / "tune"),
            failure_config=tune.FailureConfig(max_failures=spec.retries),
            progress_reporter=status_reporter(axes),
            callbacks=[progress],
            verbose=1 if verbose else 0,
        ),
    )
    # Tune reads its own result files back when fit() ends; they are off (in _run_sweep), so
    # it warned "Failed to fetch metrics" for every trial: the records are read instead.
    import logging

    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    tuner.fit()


def read_stored(trials: list[Trial], layout: SweepLayout, *, remote: bool = False
                ) -> dict[str, store.StoredTrial]:
    """The one reading of a sweep's trials before it runs (a remote storage's records are
    kept as the local copies the trials resume from; with ``remote`` nothing is written: a
    dry run)."""
    ids = [t.trial_id for t in trials]
    if layout.remote is not None and not remote:
        return layout.read_trials(ids, pull=True)
    return layout.read_trials(ids, remote=remote)


def _certify_phase(spec: SweepSpec, trials: list[Trial], layout: SweepLayout,
                   address: str | None, echo: Callable[[str], None],
                   stored: dict[str, store.StoredTrial]) -> None:
    """Certify trained models that need it, as sharded Ray tasks (see certification.py)."""
    from maxup.platform.certification import needing_certification, run_certification

    todo = needing_certification(stored, trials)
    if not todo:
        return  # nothing to certify: Ray is not even started
    cpus, gpus = start_ray(address)
    interrupt.check()
    slots = max_concurrent(spec, trials, cpus, gpus)
    run_certification(layout, todo, shards=slots, cpus=max(spec.cpus_per_trial, 1.0),
                      gpus=spec.gpus_per_trial, echo=echo)


def _finish(summary: SweepSummary, trials: list[Trial], stored: dict[str, store.StoredTrial],
            echo: Callable[[str], None]) -> SweepSummary:
    for t in trials:
        if t.trial_id in summary.skipped:
            continue
        rec = stored[t.trial_id].record
        status = None if rec is None else rec.status
        {records.Status.COMPLETED: summary.completed, records.Status.FAILED: summary.failed}.get(
            status, summary.interrupted).append(t.trial_id)
    echo(f"sweep finished in {summary.wall_s:.0f}s: {summary.line()}")
    for tid in summary.failed:
        rec = stored[tid].record
        echo(f"  FAILED {tid}: {((rec.failure if rec else None) or {}).get('reason')}")
    return summary
