"""Load stored trial records (schema ``maxup.trial/1``) into one flat pandas DataFrame.

One row per trial. Nested ``config`` / ``final`` / ``best`` / ``timings`` / ``environment`` /
``failure`` objects become dotted columns (``config.maxup.m``, ``final.test_acc``, ...); lists of
scalars inside them become hashable strings (``["crop_flip", "cutout"]`` -> ``"crop_flip+cutout"``,
``[100, 150]`` -> ``"100,150"``). ``history`` (list) and ``certification`` (dict or None) are kept
as object columns for the figures and Table 8.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from typing import Any

import pandas as pd

from maxup.errors import UsageError

SCHEMA = "maxup.trial/1"
STATUSES = ("completed", "failed", "running")
#: Scalar top-level record fields that become columns as they are.
TOP_FIELDS = ("trial_id", "sweep", "status", "seed", "paper_table", "created", "updated")
#: Nested objects flattened into dotted columns.
FLAT_SECTIONS = ("config", "final", "best", "timings", "environment", "failure")
#: Attribute of ``DataFrame.attrs`` holding the load summary (see :func:`summary`).
ATTR = "maxup_load"


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


def _schema_ok(schema: Any) -> bool:
    if not isinstance(schema, str) or not schema.startswith("maxup.trial/"):
        return False
    version = schema.split("/", 1)[1]
    return version == "1" or version.startswith("1.")


def parse_record(text: str | bytes, source: str = "<record>") -> dict:
    """Parse one record's JSON text into a flat row dict; raise ValueError when it is unusable.

    Args:
        text: the file contents.
        source: the file name used in error messages.
    """
    try:
        rec = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    if not _schema_ok(rec.get("schema")):
        raise ValueError(f"schema is {rec.get('schema')!r}, expected {SCHEMA!r}")
    if not isinstance(rec.get("config"), dict) or not isinstance(rec.get("trial_id"), str):
        raise ValueError("missing 'config' object or 'trial_id'")
    if rec.get("status") not in STATUSES:
        raise ValueError(f"status {rec.get('status')!r} is not one of {', '.join(STATUSES)}")
    row: dict[str, Any] = {f: rec.get(f) for f in TOP_FIELDS}
    if row["paper_table"] is not None:
        row["paper_table"] = str(row["paper_table"])
    if row["seed"] is None:
        row["seed"] = rec["config"].get("seed")
    for section in FLAT_SECTIONS:
        value = rec.get(section)
        if isinstance(value, dict):
            _flatten(value, section + ".", row)
    row["axes"] = rec.get("axes") or {}
    history = rec.get("history")
    row["history"] = history if isinstance(history, list) else []
    cert = rec.get("certification")
    row["certification"] = cert if isinstance(cert, dict) else None
    row["file"] = source
    return row


def _is_record_path(path: str) -> bool:
    parts = path.replace("\\", "/").rsplit("/", 2)
    name = parts[-1]
    if name == "record.json":
        return True
    return name.endswith(".json") and len(parts) >= 2 and parts[-2] == "records"


def _iter_local(root: str):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        in_records = os.path.basename(dirpath) == "records"
        for name in sorted(filenames):
            if name.startswith("."):  # atomic-write temp files
                continue
            if name == "record.json" or (in_records and name.endswith(".json")):
                path = os.path.join(dirpath, name)
                yield path, lambda p=path: _read_local(p)


def _read_local(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _iter_uri(uri: str):
    from pyarrow import fs as pafs  # lazy: only for URIs

    try:
        filesystem, base = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise UsageError(f"RESULTS: cannot open {uri!r} ({exc}); allowed: a local directory or "
                         "a URI pyarrow can read (file://, s3://, gs://, hdfs://)") from None
    info = filesystem.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise UsageError(f"RESULTS: {uri!r} does not exist; allowed: an existing results root")
    selector = pafs.FileSelector(base, recursive=True)
    infos = sorted(filesystem.get_file_info(selector), key=lambda i: i.path)
    for item in infos:
        if item.type != pafs.FileType.File or item.base_name.startswith("."):
            continue
        if _is_record_path(item.path):
            def read(p=item.path):
                with filesystem.open_input_stream(p) as fh:
                    return fh.read()
            yield item.path, read


def load_records(root: str | os.PathLike) -> pd.DataFrame:
    """Load every ``**/records/*.json`` and ``**/record.json`` under ``root`` into a DataFrame.

    Corrupt, truncated, non-JSON or foreign files (schema not ``maxup.trial/1``) are skipped with
    a :class:`RecordSkipped` warning naming the file. A trial_id seen twice (a copied results
    tree) is kept once, the most recently updated copy. Failed and running trials are kept; the
    counts are in :func:`summary`.

    Args:
        root: a local directory, or any URI ``pyarrow.fs.FileSystem.from_uri`` reads.

    Returns:
        one row per trial: ``trial_id, sweep, status, seed, paper_table``, ``config.*``,
        ``final.*``, ``best.*``, ``timings.*``, ``environment.*``, ``failure.*``, and the object
        columns ``history``, ``certification``, ``axes``, ``file``.
    """
    root = os.fspath(root)
    if "://" in root:
        files = _iter_uri(root)
    else:
        if not os.path.isdir(root):
            raise UsageError(f"RESULTS: {root!r} is not a directory; allowed: an existing "
                             "results root (local directory or URI)")
        files = _iter_local(root)
    rows: list[dict] = []
    skipped: list[str] = []
    for path, read in files:
        try:
            row = parse_record(read(), path)
        except (ValueError, OSError) as exc:
            skipped.append(path)
            warnings.warn(f"skipping {path}: {exc}", RecordSkipped, stacklevel=2)
            continue
        rows.append(row)
    rows, duplicates = _dedupe(rows)
    df = pd.DataFrame.from_records(rows) if rows else pd.DataFrame(
        columns=[*TOP_FIELDS, "history", "certification", "axes", "file"])
    df.attrs[ATTR] = {"root": root, "skipped_files": skipped, "duplicates": duplicates}
    return df


def _dedupe(rows: list[dict]) -> tuple[list[dict], list[str]]:
    seen: dict[str, int] = {}
    out: list[dict] = []
    duplicates: list[str] = []
    for row in rows:
        tid = row["trial_id"]
        if tid not in seen:
            seen[tid] = len(out)
            out.append(row)
            continue
        duplicates.append(row["file"])
        kept = out[seen[tid]]
        warnings.warn(f"trial {tid} appears twice ({kept['file']}, {row['file']}); keeping the "
                      "most recently updated", RecordSkipped, stacklevel=3)
        if str(row.get("updated") or "") > str(kept.get("updated") or ""):
            out[seen[tid]] = row
    return out, duplicates


def summary(df: pd.DataFrame) -> dict:
    """Counts of a loaded results root.

    Args:
        df: a frame from :func:`load_records`.

    Returns:
        ``{"completed", "failed", "running", "skipped", "duplicates": int,
        "failure_reasons": {reason: count}, "skipped_files": [paths]}``.
    """
    status = df["status"] if "status" in df else pd.Series([], dtype=object)
    counts = status.value_counts()
    reasons: Counter = Counter()
    if "failure.reason" in df:
        reasons.update(df.loc[status == "failed", "failure.reason"].fillna("unknown").astype(str))
    else:
        reasons.update(["unknown"] * int(counts.get("failed", 0)))
    meta = df.attrs.get(ATTR, {})
    skipped = list(meta.get("skipped_files", []))
    return {
        "completed": int(counts.get("completed", 0)),
        "failed": int(counts.get("failed", 0)),
        "running": int(counts.get("running", 0)),
        "skipped": len(skipped),
        "duplicates": len(meta.get("duplicates", [])),
        "failure_reasons": dict(reasons.most_common()),
        "skipped_files": skipped,
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
    if s["duplicates"]:
        line += f", {s['duplicates']} duplicate copies ignored"
    return line


def completed(df: pd.DataFrame) -> pd.DataFrame:
    """The completed trials only (failed and running ones never enter statistics).

    Args:
        df: a frame from :func:`load_records`.
    """
    if "status" not in df:
        return df.iloc[0:0]
    return df[df["status"] == "completed"]
