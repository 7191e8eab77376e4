"""``maxup verify``: do stored records still follow from the code? Rerun and compare.

A trial id promises that a trial is a function of its config. :func:`verify_trial` reruns a
stored trial from its record's config — on this machine, in a scratch directory, never
touching the storage — and compares the rerun with the stored history epoch by epoch, every
metric but the timings.

What a rerun must reproduce bit for bit (:func:`expectation`): the record ran with
``train.deterministic`` (or on the CPU before the setting existed: the engine's CPU arithmetic
was already deterministic), on the same device model — GPU, or CPU model and the instruction
set ATen dispatches to (``cpu_capability``) — with the same torch build; on CUDA also the same
CUDA and cuDNN versions. A record that does not state one of these facts cannot promise it. The
rerun uses the record's number of torch threads (CPU kernels split reductions by it). Measured:
the same commit on an Intel Xeon and an AMD EPYC (both one thread) gives training losses that
differ from the first epoch (by 3e-8 nats on digits, 1e-2 nats on the KJV model). The code
version is reported but does not excuse a difference: a change that keeps a trial's id must
keep its results, and a stored record that no longer follows from the code is exactly what this
check exists to catch.
Where bit-identity is not promised, the report gives each metric's largest difference and
the first epoch where the runs part, and does not fail.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from maxup import identity, records, store
from maxup.errors import UsageError
from maxup.store import TrialDir

#: History keys that measure the run rather than what it computed.
TIMING_KEYS = frozenset({"wall_s", "train_s", "eval_s", "selection_s", "images_per_s",
                         "tokens_per_s", "resumed_s", "compile_s"})


@dataclass
class Candidate:
    """A stored trial to verify: its record and where it was found."""

    record: records.TrialRecord
    source: Path
    label: str  # e.g. "fashion_cutout: maxup.m=1, seed=0"


@dataclass
class Outcome:
    """What a rerun showed for one trial."""

    trial_id: str
    label: str
    epochs: int  # epochs compared
    exact_expected: bool
    reasons: list[str]  # why bit-identity is not expected (empty when it is)
    identical: bool
    first_difference: int | None = None  # 1-based epoch where the runs first part
    differing: list[str] = field(default_factory=list)  # metrics differing at that epoch
    largest: dict = field(default_factory=dict)  # metric → largest |difference|
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None  # why the trial was not rerun

    @property
    def passed(self) -> bool:
        return self.skipped is None and (self.identical or not self.exact_expected)


# --------------------------------------------------------------------------- selection

def select(target: str | Path, *, per_sweep: int | None = 1) -> list[Candidate]:
    """The completed trials to verify under ``target``.

    Args:
        target: a storage root (``trials/`` and sweep folders with ``sweep.json``), one
            sweep's folder, or a run directory holding ``record.json``.
        per_sweep: the first this many completed trials of each sweep, in the manifest's
            order (a trial several sweeps plan counts once); None: every completed record
            (also those no manifest lists).

    Raises:
        UsageError: a remote URI, a missing path, or nothing to verify there.
    """
    text = str(target)
    if "://" in text:
        raise UsageError(f"verify: got {text!r}; allowed: a local storage directory (reruns "
                         "read and write locally; copy a remote storage first)")
    root = Path(target)
    if not root.is_dir():
        raise UsageError(f"verify: got {text!r}; allowed: an existing storage directory, "
                         "sweep folder or run directory")
    if TrialDir(root).record.is_file() and not (root / store.MANIFEST).is_file():
        rec = _read(TrialDir(root).record)
        return [Candidate(rec, TrialDir(root).record, "run")] if rec and rec.completed else []
    if (root / store.MANIFEST).is_file():
        manifests, trials_root = [root / store.MANIFEST], root.parent / store.TRIALS
    else:
        manifests, trials_root = (sorted(root.glob(f"*/{store.MANIFEST}")),
                                  root / store.TRIALS)
    chosen: dict[str, Candidate] = {}
    for manifest in manifests:
        try:
            entries = store.SweepManifest.parse(manifest.read_bytes(), str(manifest)).trials
        except OSError as exc:
            raise UsageError(f"verify: {manifest} cannot be read ({exc})") from None
        taken = 0
        for entry in entries:
            if per_sweep is not None and taken >= per_sweep:
                break
            path = TrialDir(trials_root / entry.trial_id).record
            rec = _read(path)
            if rec is None or not rec.completed:
                continue
            taken += 1
            axes = ", ".join(f"{k}={v}" for k, v in entry.axes.items())
            chosen.setdefault(rec.trial_id, Candidate(rec, path, f"{manifest.parent.name}: "
                                                             f"{axes}"))
    if per_sweep is None and trials_root.is_dir():
        for path in sorted(trials_root.glob(f"*/{store.RECORD}")):
            rec = _read(path)
            if rec is not None and rec.completed and rec.trial_id not in chosen:
                chosen[rec.trial_id] = Candidate(rec, path, rec.sweep or "not in a manifest")
    if not chosen:
        raise UsageError(f"verify: no completed trial records under {text!r}; allowed: a "
                         "storage, sweep folder or run directory with completed trials")
    return list(chosen.values())


def _read(path: Path) -> records.TrialRecord | None:
    try:
        return records.parse_record(path.read_bytes())
    except (OSError, records.RecordError):
        return None


# --------------------------------------------------------------------------- expectation

def expectation(stored: dict, rerun: dict) -> list[str]:
    """Why a rerun with environment ``rerun`` need not reproduce a record made in ``stored``
    bit for bit (empty: it must).

    Args:
        stored: the record's ``environment``.
        rerun: the rerun's ``environment`` (:func:`maxup.records.environment`).
    """
    reasons = []
    kind = _kind(stored.get("device"))
    if stored.get("deterministic") is False:
        reasons.append("recorded with train.deterministic false")
    elif stored.get("deterministic") is None and kind == "cuda":
        reasons.append("recorded on CUDA before determinism was recorded")
    if kind != _kind(rerun.get("device")):
        reasons.append(f"recorded on {kind}, rerun on {_kind(rerun.get('device'))}")
        return reasons
    keys = ["torch", "device_name"]
    keys += ["cuda", "cudnn"] if kind == "cuda" else ["cpu_capability"]
    for key in keys:
        if stored.get(key) is None:
            reasons.append(f"{key} not recorded")
        elif stored.get(key) != rerun.get(key):
            reasons.append(f"{key} {stored.get(key)!r} recorded, {rerun.get(key)!r} here")
    return reasons


def _kind(device) -> str:
    return "cuda" if str(device or "cpu").startswith("cuda") else "cpu"


def rerun_threads(environment: dict) -> tuple[int, str | None]:
    """Torch threads for the rerun: the record's, else 1 with a note saying it was assumed
    (sweep trials run with ``cpus_per_trial`` threads, 1 by default)."""
    for key in ("threads", "torch_threads"):
        value = environment.get(key)
        if isinstance(value, int) and value >= 1:
            return value, None
    return 1, "threads not recorded; rerun with 1 (the sweep default)"


# --------------------------------------------------------------------------- comparison

def compare(stored: list[dict], rerun: list[dict]) -> tuple[int | None, list[str], dict]:
    """Compare histories epoch by epoch, every key but :data:`TIMING_KEYS`.

    Returns:
        (first differing 1-based epoch or None, the keys differing there, key → largest
        absolute difference over the compared epochs; non-numeric differences count as inf).
    """
    first, differing, largest = None, [], {}
    for i, (a, b) in enumerate(zip(stored, rerun, strict=False)):
        b = json.loads(json.dumps(records._finite(b)))  # as the record would store it
        here = []
        for key in sorted((set(a) | set(b)) - TIMING_KEYS):
            gap = _gap(a.get(key), b.get(key))
            if gap:
                here.append(key)
                largest[key] = max(largest.get(key, 0.0), gap)
            else:
                largest.setdefault(key, 0.0)
        if here and first is None:
            first, differing = i + 1, here
    return first, differing, largest


def _gap(a, b) -> float:
    """0 when equal; else the absolute difference of numbers (lists: the largest), or inf."""
    if a == b and type(a) is type(b):
        return 0.0
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return max((_gap(x, y) for x, y in zip(a, b)), default=0.0)
    numeric = (int, float)
    if (isinstance(a, numeric) and isinstance(b, numeric) and not isinstance(a, bool)
            and not isinstance(b, bool)):
        d = abs(float(a) - float(b))
        return d if math.isfinite(d) and d > 0 else (math.inf if d != 0 else 0.0)
    return math.inf


# --------------------------------------------------------------------------- rerun

def verify_trial(cand: Candidate, *, epochs: int | None = None, scratch: Path | None = None,
                 data_root: str | None = None,
                 train_fn: Callable | None = None) -> Outcome:
    """Rerun one stored trial's first ``epochs`` epochs (all: None) and compare.

    Args:
        cand: the trial (:func:`select`).
        epochs: how many of the stored epochs to rerun and compare.
        scratch: where the rerun writes (a temporary directory, removed after, by default).
        data_root: ``data.root`` for the rerun (not part of the id; default: the record's).
        train_fn: the training function (default :func:`maxup.engine.train`).
    """
    import torch

    from maxup.engine import resolve_device, train

    rec = cand.record
    # Keys added since the record was made take the value it ran with (data.version 1).
    cfg = identity.as_stored(rec.config)
    stored = list(rec.history)
    n = len(stored) if epochs is None else min(epochs, len(stored))
    env = rec.environment or {}
    out = Outcome(rec.trial_id, cand.label, n, True, [], False)
    if int((cfg.get("train") or {}).get("workers", 1) or 1) > 1:
        out.skipped = "a sharded trial (train.workers > 1): rerun it with maxup train --workers"
        return out
    want = _kind(env.get("device") or cfg.get("train", {}).get("device"))
    if want == "cuda" and not torch.cuda.is_available():
        want = "cpu"
    cfg.setdefault("train", {})
    cfg["train"]["device"], cfg["train"]["progress"] = want, False
    if data_root is not None:
        cfg.setdefault("data", {})["root"] = data_root
    threads, note = rerun_threads(env)
    if note:
        out.notes.append(note)
    out.notes.append(_code_note(env))
    saved_threads = torch.get_num_threads()
    own = scratch is None
    work = Path(tempfile.mkdtemp(prefix="maxup-verify-")) if own else Path(scratch)
    try:
        torch.set_num_threads(threads)
        result = (train_fn or train)(cfg, work / rec.trial_id, resume=False, log=None,
                                     stop_after=n)
    finally:
        torch.set_num_threads(saved_threads)
        if own:
            shutil.rmtree(work, ignore_errors=True)
    here = dict(result.get("environment") or {}, device=str(resolve_device(want)))
    out.reasons = expectation(env, here)
    out.exact_expected = not out.reasons
    got = list(result.get("history") or [])
    if len(got) < n:
        out.first_difference, out.differing = len(got) + 1, ["(the rerun stopped early)"]
        out.largest = {}
        return out
    out.first_difference, out.differing, out.largest = compare(stored[:n], got[:n])
    out.identical = out.first_difference is None
    return out


def _code_note(env: dict) -> str:
    """Which code made the record and which code reran it."""
    now, dirty = records.code_version()
    then = env.get("git_commit")
    if then and now and then == now and not dirty and not env.get("git_dirty"):
        return f"same code ({now[:8]})"
    was = (then or "unknown")[:8] + (" + uncommitted changes" if env.get("git_dirty") else "")
    is_ = (now or "unknown")[:8] + (" + uncommitted changes" if dirty else "")
    return f"code: recorded at {was}, rerun at {is_}"


# --------------------------------------------------------------------------- report

def render(out: Outcome) -> list[str]:
    """The report lines of one trial."""
    head = f"{out.trial_id}  {out.label}"
    if out.skipped:
        return [f"SKIP  {head}: {out.skipped}"]
    what = f"{out.epochs} epoch{'s' if out.epochs != 1 else ''}"
    lines = []
    if out.identical:
        lines.append(f"PASS  {head}: {what}, {len(out.largest)} metrics, bit for bit")
    else:
        top = sorted(((v, k) for k, v in out.largest.items() if v), reverse=True)[:6]
        gaps = ", ".join(f"{k} {v:.3g}" for v, k in top)
        verdict = "FAIL" if out.exact_expected else "DIFF"
        lines.append(f"{verdict}  {head}: parts at epoch {out.first_difference} of {what} "
                     f"({', '.join(out.differing[:6])}); largest |diff|: {gaps}")
        if not out.exact_expected:
            lines.append("      not required to match bit for bit: " + "; ".join(out.reasons))
    lines.extend(f"      {note}" for note in out.notes)
    return lines
