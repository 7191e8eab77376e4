"""Where a sweep stands, read from its storage only: no Ray, no cluster.

:func:`sweep_status` reads a sweep's manifest (``STORAGE/<sweep>/sweep.json``) or expands
its search-space file, then each planned trial's record from ``STORAGE/trials/`` — a local
directory or a URI pyarrow reads (``s3://``, ``gs://``, ``file://``) — and returns per arm the
finished, running, failed and pending seeds, each running trial's last heartbeat (its
record's ``updated``: rewritten after every epoch), the failures with their reasons, and the
remaining trial time: a running trial's remaining epochs at its own mean epoch time; a
pending one at its arm's finished trials' mean time, else the cost model's estimate.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from maxup import records
from maxup.errors import UsageError


class _Store:
    """Reads files by path relative to a storage root (local directory or URI)."""

    def __init__(self, root: str):
        from maxup.platform.storage import is_remote

        self.root = root.rstrip("/")
        self.mirror = None
        if is_remote(self.root):
            from maxup.platform.storage import Mirror

            try:
                self.mirror = Mirror(self.root)
            except (ValueError, OSError) as exc:
                raise UsageError(f"storage {root!r} cannot be opened ({exc}); allowed: a "
                                 "directory or a URI pyarrow reads") from None

    def read(self, rel: str) -> bytes | None:
        if self.mirror is not None:
            return self.mirror.read(rel)
        try:
            return (Path(self.root) / rel).read_bytes()
        except OSError:
            return None


@dataclass
class TrialState:
    trial_id: str
    arm_id: str
    axes: dict
    status: str  # completed / running / failed / pending
    record: records.TrialRecord | None = None
    remaining_s: float | None = None


@dataclass
class SweepStatus:
    name: str
    trials: list[TrialState]
    axes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(t.status == status for t in self.trials)

    @property
    def remaining_s(self) -> float | None:
        left = [t.remaining_s for t in self.trials if t.status in ("running", "pending")]
        return None if any(v is None for v in left) else sum(left)


def _split(target: str) -> tuple[str, str]:
    """(storage root, sweep name) of ``STORAGE/SWEEP``."""
    t = target.rstrip("/")
    if "/" not in t:
        return ".", t
    root, name = t.rsplit("/", 1)
    return root or "/", name


def sweep_status(target: str, space: str | None = None) -> SweepStatus:
    """The status of sweep ``target`` (``STORAGE/SWEEP``), or of ``space`` in storage
    ``target`` when a search-space file is given.

    Raises:
        UsageError: no manifest there (and no space file), or an unreadable storage.
    """
    planned: list[tuple[str, str, dict, dict | None]] = []  # tid, arm, axes, config
    if space is not None:
        from maxup import identity
        from maxup.platform.space import load_space

        spec = load_space(space)
        root, name = target.rstrip("/"), spec.name
        axes = spec.varying_axes()
        for t in spec.expand():
            planned.append((t.trial_id, identity.arm_id(t.config), t.axes, t.config))
    else:
        root, name = _split(target)
    store = _Store(root)
    if space is None:
        raw = store.read(f"{name}/sweep.json")
        if raw is None:
            raise UsageError(f"{target!r}: no sweep manifest (sweep.json) there; allowed: "
                             "STORAGE/SWEEP of a launched sweep, or a search-space file with "
                             "--storage")
        try:
            manifest = json.loads(raw)
            axes = list(manifest.get("axes") or [])
            for e in manifest["trials"]:
                planned.append((e["trial_id"], e.get("arm_id", e["trial_id"]),
                                e.get("axes") or {}, None))
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{target}/sweep.json: not a sweep manifest ({exc})") from None
    states = []
    for tid, arm, t_axes, _config in planned:
        data = store.read(f"trials/{tid}/record.json")
        try:
            rec = None if data is None else records.parse_record(data)
        except records.RecordError:
            rec = None
        status = "pending" if rec is None else str(rec.status)
        states.append(TrialState(tid, arm, t_axes, status, rec))
    st = SweepStatus(name, states, axes)
    _remaining(st, {tid: cfg for tid, _, _, cfg in planned if cfg is not None})
    return st


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
        elif t.status in ("running", "pending"):
            if by_arm.get(t.arm_id):
                t.remaining_s = sum(by_arm[t.arm_id]) / len(by_arm[t.arm_id])
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
           f"{st.count('pending')} pending"]
    shown = [a for a in st.axes if a != "seed"]
    for group in arms.values():
        label = ", ".join(f"{a}={group[0].axes.get(a)}" for a in shown) or group[0].arm_id
        parts = []
        for status in ("completed", "running", "failed", "pending"):
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
            out.append(f"  {t.trial_id} ({', '.join(f'{k}={v}' for k, v in t.axes.items())}):"
                       f" {reason}")
    groups: dict[str, int] = {}
    for t in st.trials:
        if t.record is not None:
            line = records.provenance(t.record.environment or {})
            groups[line] = groups.get(line, 0) + 1
    if groups:
        out.append("provenance:")
        out += [f"  {n} trial{'s' if n != 1 else ''}: {line}" for line, n in groups.items()]
    left = [t for t in st.trials if t.status in ("running", "pending")]
    unknown = sum(t.remaining_s is None for t in left)
    known = sum(t.remaining_s for t in left if t.remaining_s is not None)
    out.append(f"remaining: {fmt_duration(known)} of trial time for {len(left)} trial(s)"
               + (f" ({unknown} not priced)" if unknown else ""))
    out += [f"  note: {note}" for note in st.notes]
    return out
