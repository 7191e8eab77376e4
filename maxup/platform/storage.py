"""Where a trial of a remote storage works locally (``--storage s3://bucket/prefix``).

Trials always train in a local directory (checkpoints are written and read at every epoch);
with a remote storage root the sweep mirrors the durable files — records, final and periodic
checkpoints, certification shards, the manifest — to the URI after each write, and back before
a trial resumes on whichever node Tune places it (:class:`maxup.platform.sweep.SweepLayout`,
through :class:`maxup.store.Storage`, the one reader and writer of storages). Object stores
replace a whole object on each PUT, so a reader sees the old file or the new one; ``file://``
roots get a temp-file-and-rename like local writes. Credentials come from the environment, as
pyarrow reads them (e.g. ``AWS_*`` variables or the instance profile).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from maxup.store import is_remote

__all__ = ["is_remote", "scratch_root"]


def scratch_root(uri: str) -> Path:
    """Local working directory for a remote storage root (``$MAXUP_SCRATCH`` overrides)."""
    base = Path(os.environ.get("MAXUP_SCRATCH", Path.home() / ".cache" / "maxup" / "scratch"))
    return base / hashlib.sha256(uri.encode()).hexdigest()[:12]
