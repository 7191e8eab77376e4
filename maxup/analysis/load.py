"""Load stored trial records (schema ``maxup.trial/1``) into one flat pandas DataFrame.

One row per trial and sweep (a trial two sweeps share is a row of each). Nested ``config``,
``final``, ``best``, ``timings``, ``environment`` and ``failure`` objects become dotted columns
(``config.maxup.m``, ``final.test_acc``, ...); lists of scalars inside them become hashable
strings (``["crop_flip", "cutout"]`` -> ``"crop_flip+cutout"``, ``[100, 150]`` -> ``"100,150"``).
``history`` (list) and ``certification`` (dict or None) are kept as object columns for the
figures and Table 8. Records are parsed by :func:`maxup.records.parse_record`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from typing import Any

import pandas as pd

from maxup import identity, records, store
from maxup.records import Status, TrialRecord
from maxup.store import INVALID_REASON, read_view

SCHEMA = records.SCHEMA
MANIFEST_SCHEMA = store.MANIFEST_SCHEMA
#: Scalar top-level record fields that become columns as they are.
TOP_FIELDS = ("trial_id", "sweep", "status", "seed", "paper_table", "created", "updated")
#: Nested objects flattened into dotted columns.
FLAT_SECTIONS = ("config", "final", "best", "timings", "environment", "failure")
#: Attribute of ``DataFrame.attrs`` holding the load summary (see :func:`summary`).
ATTR = "maxup_load"
__all__ = ["INVALID_REASON", "RecordSkipped", "completed", "frame_of", "load_records",
           "parse_record", "record_row", "summary", "summary_line", "unique_trials"]


class RecordSkipped(UserWarning):
    """A file under the results root could not be used as a trial record."""


def _flatten_value(value: Any) -> Any:
    if value.__class__ is not list:
        return value
    try:
        return "+".join(value)  # list of str: augment.ops
    except TypeError:
        pass
    if all(v is None or isinstance(v, (int, float)) for v in value):
        return ",".join("null" if v is None else str(v) for v in value)
    return json.dumps(value, sort_keys=True)


def _flatten(obj: dict, prefix: str, out: dict) -> None:
    for key, value in obj.items():
        name = prefix + key
        cls = value.__class__
        if cls is dict:
            if value:
                _flatten(value, name + ".", out)
            else:
                out[name] = None
        elif cls is list:
            out[name] = _flatten_value(value)
        else:
            out[name] = value


def record_row(rec: TrialRecord, source: str = "<record>",
               context: dict | None = None) -> dict:
    """One parsed record as a flat row dict.

    Args:
        rec: the parsed record.
        source: the file name kept in the ``file`` column.
        context: a sweep manifest's view of the trial (``sweep``, ``paper_table``, ``axes``
            and, when it certifies, ``certify``): the row shows the trial as that sweep
            planned it, with that sweep's certification of it.
    """
    doc = rec.to_dict()
    row: dict[str, Any] = {f: doc.get(f) for f in TOP_FIELDS}
    # One identity rule for every record, whichever version wrote its stored id.
    row["trial_id"] = identity.trial_id(rec.config)
    row["arm_id"] = identity.arm_id(rec.config)
    config = rec.config
    cert = rec.certification
    if context is not None:
        row["sweep"], row["paper_table"] = context["sweep"], context["paper_table"]
        if context.get("certify") is not None:
            config = {**rec.config, "certify": context["certify"]}
            cert = rec.certification_for(config)
    for section in FLAT_SECTIONS:
        value = config if section == "config" else doc.get(section)
        if isinstance(value, dict):
            _flatten(value, section + ".", row)
    row["axes"] = (context or {}).get("axes") or rec.axes
    row["run_config"] = config
    row["history"] = rec.history
    row["certification"] = cert
    row["file"] = source
    return row


def parse_record(text: str | bytes, source: str = "<record>") -> dict:
    """Parse one record's JSON text into a flat row dict; raise ValueError when it is unusable.

    Args:
        text: the file contents.
        source: the file name used in error messages.
    """
    return record_row(records.parse_record(text), source)


def load_records(root: str | os.PathLike) -> pd.DataFrame:
    """Load a storage (or one sweep's folder, or a folder of runs) into a DataFrame, one row
    per planned trial per sweep.

    The storage is read once by :func:`maxup.store.read_view`, the reader every command uses:
    a sweep's trials are the ones its manifest lists, read from ``trials/<trial_id>/``, so
    ``root`` may be a whole storage root or one sweep's folder and a sweep's rows are the
    same either way; a trial shared by two sweeps is a row of each, labelled with that sweep's
    name, axes and certification. A planned trial with no usable record is a row too, with
    status ``pending`` (no record yet) or ``corrupt`` (its record does not parse or is not the
    trial it claims to be), so its arm keeps its row and its cell counts it. Everything not
    used — corrupt records, strays (record files outside ``trials/<id>/``), duplicate copies
    of a run, invalid metrics — is named in a :class:`RecordSkipped` warning and in
    :func:`summary`. In a folder of ``maxup train`` runs every record file is a run.

    Args:
        root: a local directory, or any URI ``pyarrow.fs.FileSystem.from_uri`` reads.

    Returns:
        one row per trial and sweep: ``trial_id, arm_id, sweep, status, seed, paper_table``,
        ``config.*``, ``final.*``, ``best.*``, ``timings.*``, ``environment.*``,
        ``failure.*``, and the object columns ``history``, ``certification``, ``axes``,
        ``run_config`` (the resolved config as the sweep planned it) and ``file``.
        ``status`` is a record's status, or ``pending`` / ``corrupt``.
    """
    view = read_view(root)
    return frame_of(view)


def frame_of(view: store.StorageView, warn: bool = True) -> pd.DataFrame:
    """The DataFrame of a view read by :func:`maxup.store.read_view` (see
    :func:`load_records`), with the view in ``df.attrs``."""
    if warn:
        for p in view.problems:
            prefix = "skipping the metrics of" if p.kind == "invalid" else "skipping"
            warnings.warn(f"{prefix} {p.path}: {p.message}", RecordSkipped, stacklevel=3)
    rows: list[dict] = []
    for name, sv in view.sweeps.items():
        m = sv.manifest
        for entry, st in sv.trials:
            context = {"sweep": name, "paper_table": m.paper_table, "axes": entry.axes,
                       "certify": entry.certify}
            if st.record is not None:
                rows.append(record_row(st.record, st.path, context))
            else:
                rows.append(_placeholder(entry, st, context))
    for st in view.unplanned:
        if st.record is not None:
            row = record_row(st.record, st.path)
            if row["sweep"] in view.sweeps:
                # Trained by a sweep whose manifest no longer lists it: not that sweep's row
                # (its table must read the same loaded from the sweep's folder).
                row["sweep"] = None
            rows.append(row)
    _fill_configs(rows)
    df = pd.DataFrame.from_records(rows) if rows else pd.DataFrame(
        columns=[*TOP_FIELDS, "arm_id", "history", "certification", "axes", "run_config",
                 "file"])
    df.attrs[ATTR] = {"root": view.root, "view": _Shared(view)}
    return df


class _Shared:
    """Holds the view in ``DataFrame.attrs``: pandas deep-copies attrs on every operation,
    and the view (every record) is read-only once loaded, so every copy shares it."""

    def __init__(self, obj):
        self.obj = obj

    def __deepcopy__(self, memo):
        return self


def _placeholder(entry: store.ManifestEntry, st: store.StoredTrial, context: dict) -> dict:
    """The row of a planned trial without a usable record (pending or corrupt)."""
    row: dict[str, Any] = dict.fromkeys(TOP_FIELDS)
    row.update(trial_id=entry.trial_id, arm_id=entry.arm_id, status=st.state,
               sweep=context["sweep"], paper_table=context["paper_table"],
               seed=entry.axes.get("seed"), axes=entry.axes, history=[],
               certification=None, file=st.path, run_config=entry.config)
    if st.problem is not None:
        row["failure.reason"] = st.problem.message
    return row


def _fill_configs(rows: list[dict]) -> None:
    """Give each placeholder row its arm's config (its manifest entry's, else a sibling
    trial's with this seed), so it lands in its arm's cell and keeps the arm's labels."""
    by_arm = {}
    for row in rows:
        if isinstance(row.get("run_config"), dict) and row.get("arm_id") is not None:
            by_arm.setdefault(row["arm_id"], row["run_config"])
    for row in rows:
        if row["status"] not in (store.PENDING, store.CORRUPT):
            continue
        config = row.get("run_config")
        if not isinstance(config, dict) and row.get("arm_id") in by_arm:
            config = json.loads(json.dumps(by_arm[row["arm_id"]]))
            if row.get("seed") is not None:
                config["seed"] = row["seed"]
        if not isinstance(config, dict):
            # Nothing known but the sweep's axis values: enough to label the arm.
            row.update({f"config.{k}": v for k, v in (row.get("axes") or {}).items()
                        if "." in k})
            continue
        row["run_config"] = config
        _flatten(config, "config.", row)


def view_of(df: pd.DataFrame) -> store.StorageView | None:
    """The storage view a frame was loaded from (None for a frame built otherwise)."""
    held = df.attrs.get(ATTR, {}).get("view")
    return None if held is None else held.obj


def summary(df: pd.DataFrame) -> dict:
    """Counts of a loaded storage: trials, each once (a trial two sweeps plan counts once).

    Args:
        df: a frame from :func:`load_records` (or a selection of its rows).

    Returns:
        ``{"trials", "completed", "failed", "running", "pending", "corrupt", "skipped",
        "strays", "duplicates", "not_run": int, "failure_reasons": {reason: count},
        "skipped_files": [paths], "invalid_files": [paths]}``. ``pending`` (also
        ``not_run``): planned trials with no record yet; ``corrupt``: trials whose record
        cannot be used; ``skipped_files``: every file not used (corrupt records, strays,
        duplicate copies, unreadable manifests); ``invalid_files``: completed records whose
        metrics failed validation, counted as failed with reason ``"invalid record"``.
    """
    trials = unique_trials(df)
    status = trials["status"] if "status" in trials else pd.Series([], dtype=object)
    counts = status.value_counts()
    reasons: Counter = Counter()
    failed = trials[status == Status.FAILED] if len(trials) else trials
    if "failure.reason" in failed:
        reasons.update(failed["failure.reason"].fillna("unknown").astype(str))
    else:
        reasons.update(["unknown"] * len(failed))
    view = view_of(df)
    problems = view.problems if view is not None else []
    ids = set(trials["trial_id"].astype(str)) if "trial_id" in trials else set()
    # Corrupt files no manifest claims (a folder of runs) have no row: counted from the view.
    loose = [p for p in problems if p.kind == store.CORRUPT and p.trial_id not in ids]
    skipped = [p.path for p in problems if p.kind in (store.CORRUPT, "stray", "duplicate",
                                                      "manifest")]
    corrupt = int(counts.get(store.CORRUPT, 0)) + len(loose)
    pending = int(counts.get(store.PENDING, 0))
    return {
        "trials": len(trials) + len(loose),
        **{s.value: int(counts.get(s.value, 0)) for s in Status},
        "pending": pending, "not_run": pending, "corrupt": corrupt,
        "skipped": len(skipped),
        "strays": sum(p.kind == "stray" for p in problems),
        "duplicates": sum(p.kind == "duplicate" for p in problems),
        "failure_reasons": dict(reasons.most_common()),
        "skipped_files": skipped,
        "invalid_files": [p.path for p in problems if p.kind == "invalid"],
    }


def summary_line(df: pd.DataFrame) -> str:
    """One line of counts, each trial once: completed / failed (reasons) / running / pending /
    corrupt, and the files not used.

    Args:
        df: a frame from :func:`load_records`.
    """
    s = summary(df)
    failed = f"{s['failed']} failed"
    if s["failure_reasons"]:
        failed += " (" + ", ".join(f"{r}: {c}" for r, c in s["failure_reasons"].items()) + ")"
    line = (f"trials: {s['completed']} completed, {failed}, {s['running']} running (interim, "
            f"excluded)")
    if s["pending"]:
        line += f", {s['pending']} pending (planned, no record yet)"
    if s["corrupt"]:
        line += f", {s['corrupt']} corrupt (record not usable, named above)"
    line += f"; {s['skipped']} files skipped"
    if s["strays"]:
        line += f" ({s['strays']} stray record files outside trials/, never used)"
    if s["invalid_files"]:
        line += (f", {len(s['invalid_files'])} with invalid metrics (counted as failed: "
                 + ", ".join(s["invalid_files"][:3])
                 + (", ..." if len(s["invalid_files"]) > 3 else "") + ")")
    if s["duplicates"]:
        line += f", {s['duplicates']} duplicate copies ignored"
    return line


def unique_trials(df: pd.DataFrame) -> pd.DataFrame:
    """Each trial once: a trial two sweeps planned is one observation, not two.

    Args:
        df: a frame from :func:`load_records` (any selection of its rows).
    """
    if not len(df) or "trial_id" not in df:
        return df
    return df[~df["trial_id"].duplicated(keep="first")]


def completed(df: pd.DataFrame) -> pd.DataFrame:
    """The completed trials only (failed and running ones never enter statistics).

    Args:
        df: a frame from :func:`load_records`.
    """
    if "status" not in df:
        return df.iloc[0:0]
    return df[df["status"] == Status.COMPLETED]
