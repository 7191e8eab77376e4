"""Where a sweep stands, read from its storage only: no Ray, no cluster.

:func:`sweep_status` reads a sweep through :func:`maxup.store.read_view` — the one reader
``maxup tables`` and ``maxup report`` use too, so every count agrees — from a local directory
or a URI pyarrow reads (``s3://``, ``gs://``, ``file://``), or expands its search-space file
and reads those trials the same way, and returns per arm the finished, running, failed,
corrupt (a record that cannot be used, named with its reason) and pending seeds, each
running trial's last heartbeat (its record's ``updated``: rewritten after every epoch), the
failures with their reasons, and the remaining trial time: a running trial's remaining epochs
at its own mean epoch time; a pending one at its arm's finished trials' mean time, else the
estimate ``maxup sweep --dry-run`` gives it. The cost line is the dry run's own
(:func:`maxup.platform.plan.plan_and_price`, :func:`~maxup.platform.plan.cost_line`): one
figure for both commands.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

from maxup import records, store
from maxup.errors import UsageError

#: States a sweep run would still train (a corrupt record is trained again).
UNFINISHED = ("running", "pending", store.CORRUPT)


@dataclass
class TrialState:
    trial_id: str
    arm_id: str
    axes: dict
    status: str  # completed / running / failed / pending / corrupt (maxup.store.STATES)
    record: records.TrialRecord | None = None
    remaining_s: float | None = None
    problem: store.Problem | None = None


@dataclass
class SweepStatus:
    name: str
    trials: list[TrialState]
    axes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[store.Problem] = field(default_factory=list)
    overrides: dict = field(default_factory=dict)  # the manifest's command-line overrides
    command: str | None = None  # the manifest's command that runs (continues) the sweep
    cost: str | None = None  # the dry run's cost line for the trials still to train
    priced: dict = field(default_factory=dict)  # trial id → the dry run's estimate (s)

    def count(self, status: str) -> int:
        return sum(t.status == status for t in self.trials)

    @property
    def remaining_s(self) -> float | None:
        left = [t.remaining_s for t in self.trials if t.status in UNFINISHED]
        return None if any(v is None for v in left) else sum(left)


def sweep_status(target: str, space: str | None = None) -> SweepStatus:
    """The status of sweep ``target`` (``STORAGE/SWEEP``), or of ``space`` in storage
    ``target`` when a search-space file is given.

    Raises:
        UsageError: no manifest there (and no space file), or an unreadable storage.
    """
    configs: dict[str, dict] = {}
    manifest = None
    spec = trials = None
    if space is not None:
        from maxup import identity
        from maxup.platform.space import apply_overrides, load_space

        spec = load_space(space)
        try:  # the overrides the sweep ran with: they decide which trials it planned
            manifest = store.Storage(target).read_manifest(spec.name)
        except store.ManifestError:
            manifest = None
        if manifest is not None:
            apply_overrides(spec, manifest.overrides)
        name, axes = spec.name, spec.varying_axes()
        trials = spec.expand()
        storage = store.Storage(target)
        stored = storage.read_trials(t.trial_id for t in trials)
        planned = [(t.trial_id, identity.arm_id(t.config), t.axes, stored[t.trial_id])
                   for t in trials]
        configs = {t.trial_id: t.config for t in trials}
        problems = [st.problem for st in stored.values() if st.problem is not None]
    else:
        storage = store.Storage(target)
        if not storage.is_file(store.MANIFEST):
            raise UsageError(f"{target!r}: no sweep manifest ({store.MANIFEST}) there; allowed: "
                             "STORAGE/SWEEP of a launched sweep, or a search-space file with "
                             "--storage")
        view = store.read_view(target)
        if not view.sweeps:
            raise UsageError(f"{view.problems[0]}; allowed: a {store.MANIFEST_SCHEMA} manifest")
        (sv,) = view.sweeps.values()
        manifest = sv.manifest
        spec, trials = _space_of(manifest)
        name, axes = sv.manifest.name, sv.manifest.axes
        planned = [(e.trial_id, e.arm_id or e.trial_id, e.axes, st) for e, st in sv.trials]
        configs = {e.trial_id: e.config for e, _ in sv.trials if e.config is not None}
        problems = view.problems
    states = [TrialState(tid, arm, t_axes, st.state, st.record, problem=st.problem)
              for tid, arm, t_axes, st in planned]
    st = SweepStatus(name, states, axes, problems=problems)
    if manifest is not None:
        st.overrides, st.command = dict(manifest.overrides), manifest.command
    if spec is not None:
        _price(st, spec, trials)
    _remaining(st, configs)
    return st


def _space_of(manifest: store.SweepManifest):
    """(spec, trials) of a manifest's search-space file with its overrides, when the file is
    still there and plans the manifest's trials; (None, None) otherwise."""
    from maxup.platform.space import apply_overrides, load_space

    try:
        spec = load_space(manifest.source)
        apply_overrides(spec, manifest.overrides)
        trials = spec.expand()
    except (UsageError, OSError, TypeError):
        return None, None
    if {t.trial_id for t in trials} != {e.trial_id for e in manifest.trials}:
        return None, None
    return spec, trials


def _price(st: SweepStatus, spec, trials) -> None:
    """Price the sweep exactly as ``maxup sweep --dry-run`` does (:func:`plan.plan_and_price`:
    this machine, or the cluster file when it cannot run the space), so both print one cost
    figure; each unfinished trial's estimate is kept for the remaining time."""
    import os

    from maxup.errors import ProfileError
    from maxup.platform import cost, plan

    by_id = {t.trial_id: t for t in st.trials}
    statuses = {tid: (t.record.status if t.record is not None and t.status != store.CORRUPT
                      else None) for tid, t in by_id.items()}
    finished = [t.record for t in st.trials if t.record is not None]
    cpus, gpus = float(os.cpu_count() or 1), cost.local_gpu_count()
    try:
        priced = plan.plan_and_price(spec, trials, statuses, finished, cpus, gpus,
                                     needs_cluster=plan.needs_cluster(spec, trials, cpus, gpus))
    except (UsageError, ProfileError) as exc:
        st.notes.append(f"not priced: {exc}")
        return
    if priced is None:
        return
    st.cost = plan.cost_line(spec, trials, priced[0])
    st.notes.insert(0, f"priced for {priced[0].target.description}")
    st.priced = {t.trial_id: sec for t, sec in zip(priced[0].trials, priced[0].seconds,
                                                   strict=True)}


def _remaining(st: SweepStatus, configs: dict[str, dict]) -> None:
    """Fill each unfinished trial's remaining seconds (see the module docstring)."""
    by_arm: dict[str, list[float]] = {}
    arm_config: dict[str, dict] = {}
    for t in st.trials:
        if t.record is not None:
            arm_config.setdefault(t.arm_id, t.record.config)
        if t.status == "completed" and t.record.history:
            by_arm.setdefault(t.arm_id, []).append(_epochs_s(t.record))
    to_price = []
    for t in st.trials:
        if t.status == "running" and t.record is not None and t.record.history:
            per = _epochs_s(t.record) / len(t.record.history)
            t.remaining_s = max(0, t.record.config["train"]["epochs"] - len(t.record.history)) * per
        elif t.status in UNFINISHED:
            if by_arm.get(t.arm_id):  # measured: its arm's finished trials
                t.remaining_s = sum(by_arm[t.arm_id]) / len(by_arm[t.arm_id])
            elif st.priced.get(t.trial_id) is not None:  # the dry run's own estimate
                t.remaining_s = st.priced[t.trial_id]
            else:
                to_price.append(t)
    if not to_price:
        return
    from maxup.errors import ProfileError
    from maxup.platform import cost

    devices = [r.record.environment.get("device_name") for r in st.trials
               if r.record is not None and r.record.environment.get("device_name")]
    for t in to_price:
        config = configs.get(t.trial_id) or arm_config.get(t.arm_id)
        if config is None:
            continue
        kind = "cpu" if config["train"]["device"] == "cpu" else "gpu"
        device = max(set(devices), key=devices.count) if devices else (
            cost.cpu_name() if kind == "cpu" else "cluster GPU")
        try:
            prof, note = cost.find_profile(device, kind)
        except ProfileError as exc:
            st.notes.append(str(exc))
            return
        if note and note not in st.notes:
            st.notes.append(note)
        t.remaining_s = cost.estimate(config, prof).seconds


def _epochs_s(rec: records.TrialRecord) -> float:
    return float(sum(h.get("wall_s") or 0.0 for h in rec.history))


def _age(stamp: str | None, now: _dt.datetime) -> str:
    if not stamp:
        return "?"
    try:
        then = _dt.datetime.fromisoformat(stamp)
    except ValueError:
        return "?"
    from maxup.platform.cost import fmt_duration

    return f"{fmt_duration(max(0.0, (now - then).total_seconds()))} ago"


def render(st: SweepStatus, now: _dt.datetime | None = None) -> list[str]:
    """The lines ``maxup status`` prints."""
    from maxup.platform.cost import fmt_duration

    now = now or _dt.datetime.now(_dt.UTC)
    n = len(st.trials)
    arms: dict[str, list[TrialState]] = {}
    for t in st.trials:
        arms.setdefault(t.arm_id, []).append(t)
    out = [f"sweep {st.name}: {n} trials in {len(arms)} arms: {st.count('completed')} "
           f"completed, {st.count('running')} running, {st.count('failed')} failed, "
           f"{st.count('pending')} pending"
           + (f", {st.count(store.CORRUPT)} corrupt" if st.count(store.CORRUPT) else "")]
    if st.overrides:
        out.append(f"overrides: {store.override_args(st.overrides)}")
    shown = [a for a in st.axes if a != "seed"]

    def natural(group: list[TrialState]) -> tuple:  # m = 1, 4, 10: numbers by value
        values = [group[0].axes.get(a) for a in shown]
        return tuple((0, float(v), "") if isinstance(v, int | float) and not isinstance(v, bool)
                     else (1, 0.0, str(v)) for v in values)

    for group in sorted(arms.values(), key=natural):
        label = ", ".join(f"{a}={group[0].axes.get(a)}" for a in shown) or group[0].arm_id
        parts = []
        for status in ("completed", "running", "failed", "pending", store.CORRUPT):
            seeds = [t.axes.get("seed", t.trial_id) for t in group if t.status == status]
            if seeds:
                parts.append(f"{status} {seeds}")
        out.append(f"  {label}: " + "; ".join(parts))
    running = [t for t in st.trials if t.status == "running"]
    if running:
        out.append("running:")
        for t in running:
            ep = len(t.record.history)
            out.append(f"  {t.trial_id} seed {t.axes.get('seed')}: epoch {ep}/"
                       f"{t.record.config['train']['epochs']}, last heartbeat "
                       f"{_age(t.record.updated, now)}, ~{fmt_duration(t.remaining_s)} left")
    failed = [t for t in st.trials if t.status == "failed"]
    if failed:
        out.append("failed:")
        for t in failed:
            reason = (t.record.failure or {}).get("reason")
            if reason == store.INVALID_REASON:
                reason += f": {(t.record.failure or {}).get('detail')}"
            out.append(f"  {t.trial_id} ({', '.join(f'{k}={v}' for k, v in t.axes.items())}):"
                       f" {reason}")
    named = [p for p in st.problems if p.kind not in ("invalid",)]
    if named:
        out.append("not used (corrupt records, strays):")
        out += [f"  {p}" for p in named]
    groups: dict[str, int] = {}
    for t in st.trials:
        if t.record is not None:
            line = records.provenance(t.record.environment or {})
            groups[line] = groups.get(line, 0) + 1
    if groups:
        out.append("provenance:")
        out += [f"  {n} trial{'s' if n != 1 else ''}: {line}" for line, n in groups.items()]
    left = [t for t in st.trials if t.status in UNFINISHED]
    unknown = sum(t.remaining_s is None for t in left)
    known = sum(t.remaining_s for t in left if t.remaining_s is not None)
    out.append(f"remaining: {fmt_duration(known)} of trial time for {len(left)} trial(s)"
               + (f" ({unknown} not priced)" if unknown else ""))
    if st.cost:
        out.append(f"{st.cost} (as `maxup sweep --dry-run` prices it)")
    out += [f"  note: {note}" for note in st.notes]
    if st.command and left:
        out.append(f"to continue: {st.command}")
    return out
