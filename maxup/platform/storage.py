"""Remote sweep storage (``--storage s3://bucket/prefix``, ``gs://…``, ``file://…``).

Trials always train in a local directory (checkpoints are written and read at every epoch);
with a remote storage root, a :class:`Mirror` copies the durable files — records, final and
periodic checkpoints, certification shards, ``sweep.json`` — to the URI after each write, and
back before a trial resumes on whichever node Tune places it. Object stores replace a whole
object on each PUT, so a reader sees the old file or the new one; ``file://`` roots get a
temp-file-and-rename like local writes. Credentials come from the environment, as pyarrow
reads them (e.g. ``AWS_*`` variables or the instance profile).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from maxup.io import atomic_write_bytes


def is_remote(storage: str) -> bool:
    """True for a URI (``scheme://…``), false for a local or NFS path."""
    return "://" in str(storage)


def scratch_root(uri: str) -> Path:
    """Local working directory for a remote storage root (``$MAXUP_SCRATCH`` overrides)."""
    base = Path(os.environ.get("MAXUP_SCRATCH", Path.home() / ".cache" / "maxup" / "scratch"))
    return base / hashlib.sha256(uri.encode()).hexdigest()[:12]


class Mirror:
    """Copies files between a local root and the same relative paths under a URI.

    Args:
        uri: remote root, e.g. ``s3://bucket/maxup/quickstart``.
    """

    def __init__(self, uri: str):
        import pyarrow.fs as pafs

        self.uri = uri.rstrip("/")
        self.fs, base = pafs.FileSystem.from_uri(self.uri)
        self.base = base.rstrip("/")
        self._local = self.fs.type_name == "local"

    def _path(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def put(self, local: Path, rel: str) -> None:
        """Upload ``local`` to ``rel`` (replacing it whole)."""
        target = self._path(rel)
        data = Path(local).read_bytes()
        if self._local:
            atomic_write_bytes(target, data)
            return
        with self.fs.open_output_stream(target) as out:
            out.write(data)

    def read(self, rel: str) -> bytes | None:
        """The contents of ``rel``; None when it does not exist."""
        try:
            with self.fs.open_input_stream(self._path(rel)) as src:
                return src.read()
        except (FileNotFoundError, OSError):
            return None

    def get(self, rel: str, local: Path) -> bool:
        """Download ``rel`` to ``local`` atomically; False when it does not exist."""
        data = self.read(rel)
        if data is None:
            return False
        atomic_write_bytes(local, data)
        return True

    def list(self, rel_dir: str) -> list[str]:
        """Names of the files directly under ``rel_dir`` (empty when it does not exist)."""
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self._path(rel_dir),
                                                        allow_not_found=True))
        return [Path(i.path).name for i in infos if i.type == pafs.FileType.File]
