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
import posixpath
import warnings
from collections import Counter
from typing import Any

import pandas as pd

from maxup import identity, records
from maxup.errors import UsageError
from maxup.records import RecordError, Status, TrialRecord

SCHEMA = records.SCHEMA
MANIFEST_SCHEMA = records.MANIFEST_SCHEMA
#: Scalar top-level record fields that become columns as they are.
TOP_FIELDS = ("trial_id", "sweep", "status", "seed", "paper_table", "created", "updated")
#: Nested objects flattened into dotted columns.
FLAT_SECTIONS = ("config", "final", "best", "timings", "environment", "failure")
#: Attribute of ``DataFrame.attrs`` holding the load summary (see :func:`summary`).
ATTR = "maxup_load"
#: ``failure.reason`` of a completed record whose metrics failed validation
#: (:func:`maxup.records.metric_problem`): counted as a failed seed, never in a mean.
INVALID_REASON = "invalid record"


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


class _Tree:
    """The files under a results root: a local directory or a pyarrow-readable URI."""

    def __init__(self, root: str):
        self.root = root
        self.fs = None
        if "://" in root:
            from pyarrow import fs as pafs  # lazy: only for URIs

            try:
                self.fs, self.base = pafs.FileSystem.from_uri(root)
            except (ValueError, OSError) as exc:  # pyarrow.ArrowInvalid is a ValueError
                raise UsageError(f"RESULTS: cannot open {root!r} ({exc}); allowed: a local "
                                 "directory or a URI pyarrow can read (file://, s3://, gs://, "
                                 "hdfs://)") from None
            if self.fs.get_file_info(self.base).type == pafs.FileType.NotFound:
                raise UsageError(f"RESULTS: {root!r} does not exist; allowed: an existing "
                                 "results root")
        else:
            if not os.path.isdir(root):
                raise UsageError(f"RESULTS: {root!r} is not a directory; allowed: an existing "
                                 "results root (local directory or URI)")
            self.base = root

    def files(self) -> list[str]:
        """Every file path under the root, sorted; hidden files (atomic-write temps) left out."""
        if self.fs is None:
            out = []
            for dirpath, dirnames, filenames in os.walk(self.base):
                dirnames.sort()
                out += [os.path.normpath(os.path.join(dirpath, n)) for n in sorted(filenames)
                        if not n.startswith(".")]
            return out
        from pyarrow import fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.base, recursive=True))
        return sorted(i.path for i in infos
                      if i.type == pafs.FileType.File and not i.base_name.startswith("."))

    def read(self, path: str) -> bytes:
        if self.fs is None:
            with open(path, "rb") as fh:
                return fh.read()
        with self.fs.open_input_stream(path) as fh:
            return fh.read()

    @staticmethod
    def join(directory: str, *parts: str) -> str:
        return posixpath.normpath(posixpath.join(directory, *parts))


def _is_record_path(path: str) -> bool:
    parts = path.replace("\\", "/").rsplit("/", 2)
    name = parts[-1]
    if name == "record.json":
        return True
    return name.endswith(".json") and len(parts) >= 2 and parts[-2] == "records"


def _manifest(data: bytes) -> dict | None:
    """A sweep manifest (``<sweep>/sweep.json``, schema ``maxup.sweep/1``), else None."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("schema") != MANIFEST_SCHEMA:
        return None
    if not isinstance(doc.get("trials"), list) or not isinstance(doc.get("name"), str):
        return None
    return doc


def load_records(root: str | os.PathLike) -> pd.DataFrame:
    """Load every trial record under ``root`` into a DataFrame, one row per trial per sweep.

    A sweep's trials are the ones its manifest (``<sweep>/sweep.json``) lists, read from the
    content-addressed store beside it (``trials/<trial_id>/record.json``, docs/records.md),
    so ``root`` may be a whole storage root or one sweep's folder; a trial shared by two
    sweeps is a row of each, labelled with that sweep's name, axes and certification. Record
    files no manifest claims (``maxup train`` runs' ``record.json``, ``records/*.json``) are
    rows of their own. Corrupt, truncated, non-JSON or foreign files are skipped with a
    :class:`RecordSkipped` warning naming the file. The same trial (by its identity,
    :mod:`maxup.identity`) seen twice in one sweep — a copied results tree — is kept once, the
    most recently updated copy. Failed and running trials are kept; the counts are in
    :func:`summary`.

    Args:
        root: a local directory, or any URI ``pyarrow.fs.FileSystem.from_uri`` reads.

    Returns:
        one row per trial and sweep: ``trial_id, arm_id, sweep, status, seed, paper_table``,
        ``config.*``, ``final.*``, ``best.*``, ``timings.*``, ``environment.*``,
        ``failure.*``, and the object columns ``history``, ``certification``, ``axes``,
        ``run_config`` (the resolved config as the sweep planned it) and ``file``.
        ``df.attrs["maxup_load"]["planned"]`` maps each arm id to the trial ids sweep
        manifests planned for it (the cells' ``n_planned``).
    """
    tree = _Tree(os.fspath(root))
    paths = tree.files()
    parsed: dict[str, TrialRecord | None] = {}
    skipped: list[str] = []
    invalid: list[str] = []

    def parse(path: str, warn: bool = True) -> TrialRecord | None:
        if path not in parsed:
            try:
                parsed[path] = records.parse_record(tree.read(path))
            except (RecordError, OSError) as exc:
                parsed[path] = None
                if warn:
                    skipped.append(path)
                    warnings.warn(f"skipping {path}: {exc}", RecordSkipped, stacklevel=3)
            else:
                problem = records.metric_problem(parsed[path])
                if problem is not None:
                    # Kept out of every mean, but its cell shows it: a failed seed whose
                    # reason says the record is invalid.
                    invalid.append(path)
                    warnings.warn(f"skipping the metrics of {path}: {problem}", RecordSkipped,
                                  stacklevel=3)
                    rec = parsed[path]
                    rec.status = Status.FAILED
                    rec.failure = {"reason": INVALID_REASON, "detail": problem}
        return parsed[path]

    rows: list[dict] = []
    claimed: set[str] = set()
    planned: dict[str, set[str]] = {}
    missing = 0
    for path in paths:
        if posixpath.basename(path) != "sweep.json":
            continue
        try:
            manifest = _manifest(tree.read(path))
        except OSError:
            manifest = None
        if manifest is None:
            continue
        trials_root = tree.join(posixpath.dirname(path), manifest.get("trials_root") or
                                "../trials")
        for entry in manifest["trials"]:
            if isinstance(entry.get("arm_id"), str):
                planned.setdefault(entry["arm_id"], set()).add(str(entry.get("trial_id")))
            rec_path = tree.join(trials_root, str(entry.get("trial_id")), "record.json")
            claimed.add(rec_path)
            rec = parse(rec_path, warn=rec_path in paths)
            if rec is None:
                missing += 1
                continue
            rows.append(record_row(rec, rec_path, {
                "sweep": manifest["name"], "paper_table": manifest.get("paper_table"),
                "axes": entry.get("axes"), "certify": entry.get("certify")}))
    for path in paths:
        if _is_record_path(path) and path not in claimed:
            rec = parse(path)
            if rec is not None:
                rows.append(record_row(rec, path))
    rows, duplicates = _dedupe(rows)
    df = pd.DataFrame.from_records(rows) if rows else pd.DataFrame(
        columns=[*TOP_FIELDS, "arm_id", "history", "certification", "axes", "run_config",
                 "file"])
    df.attrs[ATTR] = {"root": tree.root, "skipped_files": skipped, "duplicates": duplicates,
                      "invalid_files": invalid,
                      "planned_missing": missing,
                      "planned": {k: sorted(v) for k, v in planned.items()}}
    return df


def _dedupe(rows: list[dict]) -> tuple[list[dict], list[str]]:
    seen: dict[tuple, int] = {}
    out: list[dict] = []
    duplicates: list[str] = []
    for row in rows:
        key = (row["sweep"], row["trial_id"])
        if key not in seen:
            seen[key] = len(out)
            out.append(row)
            continue
        duplicates.append(row["file"])
        kept = out[seen[key]]
        warnings.warn(f"trial {row['trial_id']} appears twice ({kept['file']}, {row['file']}); "
                      "keeping the most recently updated", RecordSkipped, stacklevel=3)
        if str(row.get("updated") or "") > str(kept.get("updated") or ""):
            out[seen[key]] = row
    return out, duplicates


def summary(df: pd.DataFrame) -> dict:
    """Counts of a loaded results root.

    Args:
        df: a frame from :func:`load_records`.

    Returns:
        ``{"completed", "failed", "running", "skipped", "duplicates", "not_run": int,
        "failure_reasons": {reason: count}, "skipped_files": [paths], "invalid_files":
        [paths]}``; ``not_run`` counts trials a sweep manifest planned that have no record
        yet; ``invalid_files`` are completed records whose metrics failed validation
        (:func:`maxup.records.metric_problem`), counted as failed with reason
        ``"invalid record"``.
    """
    status = df["status"] if "status" in df else pd.Series([], dtype=object)
    counts = status.value_counts()
    reasons: Counter = Counter()
    if "failure.reason" in df:
        reasons.update(df.loc[status == Status.FAILED, "failure.reason"].fillna("unknown")
                       .astype(str))
    else:
        reasons.update(["unknown"] * int(counts.get(Status.FAILED, 0)))
    meta = df.attrs.get(ATTR, {})
    skipped = list(meta.get("skipped_files", []))
    return {
        **{s.value: int(counts.get(s.value, 0)) for s in Status},
        "skipped": len(skipped),
        "duplicates": len(meta.get("duplicates", [])),
        "not_run": int(meta.get("planned_missing", 0)),
        "failure_reasons": dict(reasons.most_common()),
        "skipped_files": skipped,
        "invalid_files": list(meta.get("invalid_files", [])),
    }


def summary_line(df: pd.DataFrame) -> str:
    """One line of counts: completed / failed (reasons) / running / skipped files.

    Args:
        df: a frame from :func:`load_records`.
    """
    s = summary(df)
    failed = f"{s['failed']} failed"
    if s["failure_reasons"]:
        failed += " (" + ", ".join(f"{r}: {c}" for r, c in s["failure_reasons"].items()) + ")"
    line = (f"records: {s['completed']} completed, {failed}, {s['running']} running (interim, "
            f"excluded), {s['skipped']} files skipped")
    if s["invalid_files"]:
        line += (f", {len(s['invalid_files'])} with invalid metrics (counted as failed: "
                 + ", ".join(s["invalid_files"][:3])
                 + (", ..." if len(s["invalid_files"]) > 3 else "") + ")")
    if s["duplicates"]:
        line += f", {s['duplicates']} duplicate copies ignored"
    if s["not_run"]:
        line += f", {s['not_run']} planned trials not run yet"
    return line


def unique_trials(df: pd.DataFrame) -> pd.DataFrame:
    """Each trial once: a trial two sweeps planned is one observation, not two.

    Args:
        df: a frame from :func:`load_records` (any selection of its rows).
    """
    if not len(df) or "trial_id" not in df:
        return df
    return df[~df["trial_id"].duplicated(keep="first")]


def planned_trials(df: pd.DataFrame, arm: str) -> set[str]:
    """Trial ids a sweep manifest under the loaded root planned for arm id ``arm``.

    Args:
        df: a frame from :func:`load_records`.
        arm: an arm id.
    """
    return set(df.attrs.get(ATTR, {}).get("planned", {}).get(arm, ()))


def completed(df: pd.DataFrame) -> pd.DataFrame:
    """The completed trials only (failed and running ones never enter statistics).

    Args:
        df: a frame from :func:`load_records`.
    """
    if "status" not in df:
        return df.iloc[0:0]
    return df[df["status"] == Status.COMPLETED]
