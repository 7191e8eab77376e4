"""Trial records: the one durable JSON file per run (schema in docs/records.md).

The engine builds a record from a run's history; the sweep driver writes one per trial; the
analysis package reads them. Plain JSON, written atomically, never pickled.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from maxup.io import atomic_write_json

SCHEMA = "maxup.trial/1"

#: Config keys that say where or how verbosely a run happens, not what it computes: they are
#: left out of the trial id so the same sweep gets the same ids on any machine.
RUN_LOCAL_KEYS = ("data.root", "data.num_workers", "data.download", "train.progress",
                  "train.device")


def now() -> str:
    """Current UTC time, ISO-8601."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def trial_id(config: dict) -> str:
    """12 hex chars of sha256 over the canonical JSON of the resolved config (seed included).

    Args:
        config: nested resolved run config (``maxup.config.to_dict``).
    """
    ident = json.loads(json.dumps(config))
    for key in RUN_LOCAL_KEYS:
        node = ident
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    canon = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:12]


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str = "cpu", workers: int = 1) -> dict:
    """Versions and machine facts stored in every record."""
    import torch

    import maxup

    ray_version = None
    if "ray" in sys.modules:
        ray_version = getattr(sys.modules["ray"], "__version__", None)
    return {
        "maxup": maxup.__version__,
        "torch": torch.__version__,
        "ray": ray_version,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "device": device,
        "workers": workers,
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
    }


def _finite(value: Any) -> Any:
    """NaN/inf become strings so the record stays valid JSON (they are failure evidence)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def build_record(*, config: dict, history: list[dict], status: str, timings: dict,
                 env: dict, failure: dict | None = None, sweep: str | None = None,
                 axes: dict | None = None, paper_table: str | None = None,
                 certification: dict | None = None, created: str | None = None) -> dict:
    """Assemble a record (see docs/records.md) from a run's per-epoch history.

    Args:
        config: nested resolved run config.
        history: per-epoch metric dicts, epochs in order, each once.
        status: "running", "completed" or "failed".
        timings: totals (wall_s, train_s, eval_s, selection_s, selection_share, images_per_s).
        env: :func:`environment` output.
        failure: reason/epoch/step/value when failed.
        sweep, axes, paper_table: sweep context (None/{} for a single run).
        certification: randomized-smoothing summary, if any.
        created: creation timestamp to keep across rewrites.
    """
    final = dict(history[-1]) if history else {}
    best = {}
    if history:
        best = dict(max(history, key=lambda h: (h.get("test_acc") or -1.0, -h["epoch"])))
    return _finite({
        "schema": SCHEMA,
        "sweep": sweep,
        "trial_id": trial_id(config),
        "status": status,
        "config": config,
        "seed": config["seed"],
        "axes": axes or {},
        "paper_table": paper_table,
        "final": final,
        "best": best,
        "history": history,
        "timings": timings,
        "environment": env,
        "failure": failure,
        "certification": certification,
        "created": created or now(),
        "updated": now(),
    })


def write_record(path: str | os.PathLike, record: dict) -> Path:
    """Write a record atomically, keeping the ``created`` time of the record it replaces.

    A run rewrites its record after every epoch; ``created`` stays the time of the first
    write of that trial's record (``record["created"]`` is updated in place to match).
    """
    old = read_record(path)
    if old and old.get("trial_id") == record.get("trial_id") and old.get("created"):
        record["created"] = old["created"]
    return atomic_write_json(path, record)


def read_record(path: str | os.PathLike) -> dict | None:
    """Read a record; None when missing, unreadable or not of this schema."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return None
    return data


def mark_failed(path: str | os.PathLike, *, config: dict, reason: str, extra: dict | None = None,
                detail: str | None = None) -> dict:
    """Set a trial's record to failed, keeping whatever history it already holds."""
    extra = extra or {}
    rec = read_record(path)
    if rec is None:
        rec = build_record(config=config, history=[], status="failed", timings={},
                           env=environment(), sweep=extra.get("sweep"), axes=extra.get("axes"),
                           paper_table=extra.get("paper_table"))
    last = rec["history"][-1]["epoch"] if rec["history"] else 0
    rec["status"] = "failed"
    rec["failure"] = {"reason": reason, "epoch": last + 1, "step": None, "value": None,
                      "detail": detail}
    rec["updated"] = now()
    write_record(path, rec)
    return rec
