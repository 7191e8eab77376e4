"""The storage contract: where every file of a trial and of a sweep lives, who writes it, and
what a reader may assume. Written down once here; ``docs/records.md`` is its user-facing half.

Layout of a storage root ``S`` (a local or NFS directory, or a URI pyarrow reads)::

    S/trials/<trial_id>/record.json                  the trial's record (maxup.records)
    S/trials/<trial_id>/checkpoints/last.pt          its checkpoint
    S/trials/<trial_id>/log.txt, metrics.*, lock     its epoch log and metrics; the training lock
    S/trials/<trial_id>/ray_train/                   Ray Train's run of a sharded trial
    S/trials/<trial_id>/tensorboard/<axes>/          TensorBoard event files (a view)
    S/trials/<trial_id>/certify/<cid>/shard-K-of-N.json   certification shards
    S/trials/<trial_id>/certify/<cid>/certify.tsv    the same rows in Cohen et al.'s format
    S/<sweep>/sweep.json                             the sweep's manifest (SweepManifest)
    S/<sweep>/tune/                                  Ray Tune's own files (never read back)

A ``maxup train`` run directory ``D`` is one :class:`TrialDir`: ``D/record.json``,
``D/checkpoints/last.pt``, ``D/log.txt``.

Who writes what
---------------
- **The trial** (the engine, in whatever process trains it, holding ``lock``) writes its own
  record after every epoch and its checkpoint; nothing else writes a trial's folder while it
  trains. The certification phase adds shards and a certification to a *finished* record.
- **The sweep driver** writes its manifest before any trial starts, and again when it runs the
  same sweep later: the same trials (a run planning others is refused unless ``--replan``,
  which replaces it), with the command-line overrides and the command that runs it again.
- Every write is atomic: a temp file in the same directory, ``fsync``, ``os.replace``
  (``maxup.io``); an object store replaces a whole object on each PUT. A reader sees the old
  file or the new one, never half.

What a reader may assume (and what :func:`read_view` checks, for every command alike)
-------------------------------------------------------------------------------------
- The record of trial ``X`` is ``trials/X/record.json`` and nothing else. A file elsewhere
  under a storage that looks like a record (``record.json``, ``records/*.json``, a copy in a
  backup folder) is a **stray**: listed, never used. Only a folder of ``maxup train`` runs
  (no ``trials/`` and no manifest) has its records where the runs wrote them; two copies of
  one trial there are **duplicates**: the most recently updated is used, the others named.
- A record is used only when it parses (:func:`maxup.records.parse_record`), its ``trial_id``
  is the id its ``config`` hashes to (:mod:`maxup.identity`) and, in a storage, the folder it
  lies in. Otherwise it is **corrupt**: named, excluded, and counted against its trial.
- A completed record whose metrics fail validation (:func:`maxup.records.metric_problem`)
  is **invalid**: kept out of every mean and counted as failed (reason ``invalid record``).
- A trial a manifest plans and the storage has no record of is **pending**.
- A manifest is a ``maxup.sweep/1`` document (:class:`SweepManifest`); one that does not
  parse is a problem of the storage, named like a corrupt record.

Imports neither torch nor Ray (pyarrow only for a URI), so the analysis package uses it.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maxup import identity, records
from maxup.errors import UsageError
from maxup.io import atomic_write_bytes, atomic_write_json

# ------------------------------------------------------------------------------ file names
TRIALS = "trials"
RECORD = "record.json"
CHECKPOINTS = "checkpoints"
CHECKPOINT = "last.pt"
LOG = "log.txt"
LOCK = "lock"
TENSORBOARD = "tensorboard"
RAY_TRAIN = "ray_train"
CERTIFY = "certify"
CERTIFY_TSV = "certify.tsv"
MANIFEST = "sweep.json"
TUNE = "tune"
#: Optional per-sweep note of how it was run (``command``, ``wall_s``), read by the report.
SWEEP_RUN = "run.json"
#: Folder of an older layout's records (``<sweep>/records/<id>.json``): read in run folders.
LEGACY_RECORDS = "records"
#: The schema of a sweep manifest.
MANIFEST_SCHEMA = "maxup.sweep/1"

# The states a trial can be in, as every reader names them.
COMPLETED, RUNNING, FAILED = (str(s) for s in (records.Status.COMPLETED,
                                               records.Status.RUNNING, records.Status.FAILED))
PENDING = "pending"  # planned, no record yet
CORRUPT = "corrupt"  # a record file that cannot be used (unparseable, or not this trial's)
STATES = (COMPLETED, RUNNING, FAILED, PENDING, CORRUPT)
#: ``failure.reason`` of a completed record whose metrics failed validation.
INVALID_REASON = "invalid record"


def is_remote(storage: str | os.PathLike) -> bool:
    """True for a URI (``scheme://…``), false for a local or NFS path."""
    return "://" in str(storage)


class TrialDir:
    """Every file of one trial: a storage's ``trials/<trial_id>/`` or a run directory.

    Args:
        path: the folder.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"TrialDir({str(self.path)!r})"

    @property
    def record(self) -> Path:
        return self.path / RECORD

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINTS / CHECKPOINT

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def ray_train(self) -> Path:
        return self.path / RAY_TRAIN

    def certify_dir(self, certification_id: str) -> Path:
        return self.path / CERTIFY / certification_id

    def shard(self, certification_id: str, k: int, n: int) -> Path:
        """Shard ``k`` (0-based) of ``n`` of one certification."""
        return self.certify_dir(certification_id) / f"shard-{k}-of-{n}.json"

    def certify_tsv(self, certification_id: str) -> Path:
        return self.certify_dir(certification_id) / CERTIFY_TSV


def trial_rel(trial_id: str) -> str:
    """``trials/<trial_id>``: a trial's folder relative to its storage root."""
    return f"{TRIALS}/{trial_id}"


def record_rel(trial_id: str) -> str:
    return f"{trial_rel(trial_id)}/{RECORD}"


def checkpoint_rel(trial_id: str) -> str:
    return f"{trial_rel(trial_id)}/{CHECKPOINTS}/{CHECKPOINT}"


def manifest_rel(sweep: str) -> str:
    return f"{sweep}/{MANIFEST}"


def is_record_name(rel: str) -> bool:
    """Whether a path looks like a record file: ``…/record.json`` or ``…/records/*.json``."""
    parts = rel.replace("\\", "/").split("/")
    return parts[-1] == RECORD or (len(parts) >= 2 and parts[-2] == LEGACY_RECORDS
                                   and parts[-1].endswith(".json"))


# -------------------------------------------------------------------------------- manifest
class ManifestError(UsageError):
    """A ``sweep.json`` that is not a ``maxup.sweep/1`` manifest (the message says why)."""


@dataclass
class ManifestEntry:
    """One planned trial of a sweep: its ids, this sweep's axis values (seed included) and,
    when the sweep certifies it, the certification id and settings. ``config`` (the resolved
    config) is written by current sweeps so a trial not run yet still has its arm's labels."""

    trial_id: str
    arm_id: str | None = None
    axes: dict = field(default_factory=dict)
    certification_id: str | None = None
    certify: dict | None = None
    config: dict | None = None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"trial_id": self.trial_id, "arm_id": self.arm_id,
                               "axes": self.axes}
        if self.certification_id is not None:
            out["certification_id"] = self.certification_id
            out["certify"] = self.certify
        if self.config is not None:
            out["config"] = self.config
        return out


@dataclass
class SweepManifest:
    """``S/<sweep>/sweep.json`` (schema ``maxup.sweep/1``): what one sweep planned.

    ``parse(manifest.to_dict()) == manifest``.
    """

    name: str
    trials: list[ManifestEntry]
    description: str = ""
    paper_table: str | None = None
    source: str | None = None
    axes: list[str] = field(default_factory=list)
    trials_root: str = f"../{TRIALS}"
    schema: str = MANIFEST_SCHEMA
    #: The command-line overrides the sweep ran with (dotted key → value, as parsed: trial
    #: keys such as ``train.epochs`` and the space's own ``seeds``, ``concurrency``,
    #: ``resources.*``); empty for a sweep run as its file says (and for older manifests).
    overrides: dict = field(default_factory=dict)
    #: The exact command that runs (or continues) this sweep, overrides included; None in
    #: manifests written before it was stored.
    command: str | None = None

    @classmethod
    def plan(cls, *, name: str, trials: Iterable, description: str = "",
             paper_table: str | None = None, source: str | None = None,
             axes: Iterable[str] = (), overrides: dict | None = None,
             command: str | None = None) -> SweepManifest:
        """The manifest of a sweep about to run.

        Args:
            trials: objects with ``trial_id``, ``config`` and ``axes`` (the expanded trials).
            overrides: the command line's overrides of the space file.
            command: the command that runs this sweep again.
        """
        entries = []
        for t in trials:
            cert = t.config.get("certify") or {}
            entries.append(ManifestEntry(
                t.trial_id, identity.arm_id(t.config), dict(t.axes),
                identity.certification_id(t.config) if cert.get("enabled") else None,
                cert if cert.get("enabled") else None, t.config))
        return cls(name=name, trials=entries, description=description or "",
                   paper_table=paper_table, source=source, axes=list(axes),
                   overrides=dict(overrides or {}), command=command)

    @classmethod
    def parse(cls, data: bytes | str | dict, where: str = MANIFEST) -> SweepManifest:
        """Parse and validate a manifest.

        Raises:
            ManifestError: one line naming the field, its value and what is allowed.
        """
        if isinstance(data, bytes | str):
            try:
                data = json.loads(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ManifestError(f"{where}: not valid JSON ({exc}); allowed: a "
                                    f"{MANIFEST_SCHEMA} manifest") from None
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: got a JSON {type(data).__name__}; allowed: an object")

        def bad(key: str, value, allowed: str) -> ManifestError:
            shown = repr(value)
            shown = shown if len(shown) <= 80 else shown[:60] + "..."
            return ManifestError(f"{where}: {key}: got {shown}; allowed: {allowed}")

        if data.get("schema") != MANIFEST_SCHEMA:
            raise bad("schema", data.get("schema"), repr(MANIFEST_SCHEMA))
        name = data.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise bad("name", name, "the sweep's name (a non-empty folder name)")
        if not isinstance(data.get("trials"), list):
            raise bad("trials", data.get("trials"), "a list of planned trials")
        entries = []
        for i, e in enumerate(data["trials"]):
            key = f"trials[{i}]"
            if not isinstance(e, dict):
                raise bad(key, e, "an object with trial_id, arm_id and axes")
            tid = e.get("trial_id")
            if not isinstance(tid, str) or not tid or "/" in tid:
                raise bad(f"{key}.trial_id", tid, "a trial id (12 hex digits)")
            for opt, types in (("arm_id", str), ("axes", dict), ("certification_id", str),
                               ("certify", dict), ("config", dict)):
                if e.get(opt) is not None and not isinstance(e[opt], types):
                    raise bad(f"{key}.{opt}", e[opt], f"a {types.__name__} or null")
            entries.append(ManifestEntry(tid, e.get("arm_id"), dict(e.get("axes") or {}),
                                         e.get("certification_id"), e.get("certify"),
                                         e.get("config")))
        axes = data.get("axes") or []
        if not isinstance(axes, list):
            raise bad("axes", axes, "a list of axis names")
        root = data.get("trials_root") or f"../{TRIALS}"
        if root != f"../{TRIALS}":
            raise bad("trials_root", root, repr(f"../{TRIALS}"))
        pt = data.get("paper_table")
        overrides = data.get("overrides") or {}
        if not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
            raise bad("overrides", overrides, "an object of dotted keys to values, or null")
        command = data.get("command")
        if command is not None and not isinstance(command, str):
            raise bad("command", command, "a string or null")
        return cls(name=name, trials=entries, description=str(data.get("description") or ""),
                   paper_table=None if pt is None else str(pt), source=data.get("source"),
                   axes=[str(a) for a in axes], trials_root=root, overrides=dict(overrides),
                   command=command)

    def to_dict(self) -> dict:
        return {"schema": self.schema, "name": self.name, "description": self.description,
                "paper_table": self.paper_table, "source": self.source, "axes": self.axes,
                "overrides": self.overrides, "command": self.command,
                "trials_root": self.trials_root, "trials": [e.to_dict() for e in self.trials]}

    def override_args(self) -> str:
        """The overrides as command-line arguments (``--train.epochs=2 …``); ``""`` for none."""
        return override_args(self.overrides)


def override_args(overrides: dict) -> str:
    """Dotted overrides as the arguments that give them (``--train.epochs=2``), each quoted
    for a POSIX shell where needed; values are written as YAML flow scalars, which is how the
    command line reads them back (:func:`maxup.config.parse_overrides`)."""
    import shlex

    return " ".join(shlex.quote(f"--{key}={_flow(value)}") for key, value in overrides.items())


def _flow(value: Any) -> str:
    """A value as the YAML text that parses back to it (``2``, ``0.1``, ``[1, 2]``, ``null``)."""
    if isinstance(value, str):
        import yaml

        try:
            if yaml.safe_load(value) == value and value.strip() == value and value:
                return value
        except yaml.YAMLError:
            pass
        return json.dumps(value)
    return json.dumps(value)


# ----------------------------------------------------------------------------- the reader
@dataclass
class Problem:
    """Something under a storage that a reader could not use, named the same way everywhere.

    ``kind``: ``corrupt`` (a record that does not parse or is not the trial it claims to be),
    ``invalid`` (a completed record with invalid metrics: counted as failed), ``stray``
    (a record-like file outside ``trials/<id>/``), ``duplicate`` (a second copy of a run's
    record in a folder of runs), ``manifest`` (a sweep.json that does not parse).
    """

    kind: str
    path: str
    message: str
    trial_id: str | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class StoredTrial:
    """One trial as the storage holds it.

    ``state``: one of :data:`STATES`; ``record``: the usable record (None when pending or
    corrupt; an invalid record is kept with status failed); ``problem``: why not used as is.
    """

    trial_id: str
    path: str
    state: str
    record: records.TrialRecord | None = None
    problem: Problem | None = None


def classify(data: bytes | None, path: str, trial_id: str | None = None) -> StoredTrial:
    """The one judgement of a record file, used by every reader.

    Args:
        data: the file's bytes (None: no file).
        path: its path as the reader names it.
        trial_id: the id its location says it is (``trials/<id>/``); None for a run's file.
    """
    if data is None:
        return StoredTrial(trial_id or path, path, PENDING)
    try:
        rec = records.parse_record(data)
    except records.RecordError as exc:
        return StoredTrial(trial_id or path, path, CORRUPT,
                           problem=Problem(CORRUPT, path, f"not a usable record ({exc})",
                                           trial_id))
    actual = identity.trial_id(rec.config)
    claims = {"its trial_id field": rec.trial_id}
    if trial_id is not None:
        claims["its folder"] = trial_id
    wrong = [f"{where} says {value}" for where, value in claims.items() if value != actual]
    if wrong:
        return StoredTrial(trial_id or rec.trial_id, path, CORRUPT, problem=Problem(
            CORRUPT, path, f"trial id mismatch: its config hashes to {actual}, "
            + " and ".join(wrong) + " (edited after it was written?)", trial_id or actual))
    problem = records.metric_problem(rec)
    if problem is not None:
        rec.status = records.Status.FAILED
        rec.failure = {"reason": INVALID_REASON, "detail": problem}
        return StoredTrial(actual, path, FAILED, rec,
                           Problem("invalid", path, f"invalid metrics ({problem}); counted as "
                                   "failed", actual))
    return StoredTrial(actual, path, str(rec.status), rec)


class Storage:
    """A storage root (local directory or URI), read and written by relative paths.

    Args:
        root: a directory, or a URI ``pyarrow.fs.FileSystem.from_uri`` opens (``s3://``,
            ``gs://``, ``file://``).

    Raises:
        UsageError: a URI pyarrow cannot open.
    """

    def __init__(self, root: str | os.PathLike):
        text = os.fspath(root)
        self.remote = is_remote(text)
        self.root = text.rstrip("/") if self.remote else text
        self.fs = None
        if self.remote:
            from pyarrow import fs as pafs  # lazy: only for URIs

            try:
                self.fs, base = pafs.FileSystem.from_uri(self.root)
            except (ValueError, OSError) as exc:  # pyarrow.ArrowInvalid is a ValueError
                raise UsageError(f"storage: cannot open {text!r} ({exc}); allowed: a "
                                 "directory or a URI pyarrow reads (file://, s3://, gs://)"
                                 ) from None
            self.base = base.rstrip("/")
            self._local_fs = self.fs.type_name == "local"
        else:
            self.base = self.root
        self.reads = 0  # record and manifest files read (what tests count)

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    def path(self, rel: str = "") -> str:
        """The full path (or URI path) of ``rel``."""
        if self.remote:
            return f"{self.base}/{rel}" if rel else self.base
        return os.path.join(self.base, rel) if rel else self.base

    def child(self, rel: str) -> Storage:
        """The storage rooted at ``rel`` below this one."""
        return Storage(f"{self.root}/{rel}" if self.remote else os.path.join(self.root, rel))

    def parent(self) -> Storage:
        """The storage rooted one folder up."""
        if self.remote:
            return Storage(self.root.rsplit("/", 1)[0])
        return Storage(os.path.dirname(os.path.abspath(self.root)))

    @property
    def name(self) -> str:
        return posixpath.basename(self.root.rstrip("/")) if self.remote else \
            os.path.basename(os.path.abspath(self.root))

    # --------------------------------------------------------------------------- raw I/O
    def read(self, rel: str) -> bytes | None:
        """The bytes of ``rel``; None when it does not exist or cannot be read."""
        try:
            if self.fs is None:
                with open(self.path(rel), "rb") as fh:
                    return fh.read()
            with self.fs.open_input_stream(self.path(rel)) as fh:
                return fh.read()
        except (OSError, ValueError):
            return None

    def write(self, rel: str, data: bytes) -> None:
        """Replace ``rel`` whole (atomically on a file system)."""
        if self.fs is None or self._local_fs:
            atomic_write_bytes(self.path(rel), data)
            return
        with self.fs.open_output_stream(self.path(rel)) as out:
            out.write(data)

    def put(self, local: str | os.PathLike, rel: str) -> None:
        """Upload a local file to ``rel``."""
        self.write(rel, Path(local).read_bytes())

    def get(self, rel: str, local: str | os.PathLike) -> bool:
        """Download ``rel`` to a local file atomically; False when it does not exist."""
        data = self.read(rel)
        if data is None:
            return False
        atomic_write_bytes(local, data)
        return True

    def is_dir(self, rel: str = "") -> bool:
        if self.fs is None:
            return os.path.isdir(self.path(rel))
        from pyarrow import fs as pafs

        try:
            return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.Directory
        except (OSError, ValueError):
            return False

    def is_file(self, rel: str) -> bool:
        if self.fs is None:
            return os.path.isfile(self.path(rel))
        from pyarrow import fs as pafs

        try:
            return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File
        except (OSError, ValueError):
            return False

    def list(self, rel_dir: str = "", dirs: bool = False) -> list[str]:
        """Names directly under ``rel_dir`` (files, or folders with ``dirs``), sorted; empty
        when it does not exist."""
        if self.fs is None:
            try:
                entries = os.scandir(self.path(rel_dir))
            except OSError:
                return []
            with entries:
                return sorted(e.name for e in entries
                              if (e.is_dir() if dirs else e.is_file())
                              and not e.name.startswith("."))
        from pyarrow import fs as pafs

        want = pafs.FileType.Directory if dirs else pafs.FileType.File
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel_dir),
                                                            allow_not_found=True))
        except (OSError, ValueError):
            return []
        return sorted(i.base_name for i in infos
                      if i.type == want and not i.base_name.startswith("."))

    def walk(self, rel_dir: str = "", skip: tuple[str, ...] = ()) -> list[str]:
        """Every file under ``rel_dir`` as a path relative to the root, sorted; hidden files
        (atomic-write temps) and folders named in ``skip`` left out."""
        out: list[str] = []
        if self.fs is None:
            top = self.path(rel_dir)
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames[:] = sorted(d for d in dirnames if d not in skip
                                     and not d.startswith("."))
                rel = os.path.relpath(dirpath, self.base)
                rel = "" if rel == "." else rel.replace(os.sep, "/")
                out += [f"{rel}/{n}" if rel else n for n in filenames if not n.startswith(".")]
            return sorted(out)
        from pyarrow import fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel_dir), recursive=True,
                                                            allow_not_found=True))
        except (OSError, ValueError):
            return []
        for i in infos:
            rel = i.path[len(self.base) + 1:] if i.path.startswith(self.base + "/") else i.path
            parts = rel.split("/")
            if (i.type == pafs.FileType.File and not i.base_name.startswith(".")
                    and not any(p in skip for p in parts[:-1])):
                out.append(rel)
        return sorted(out)

    # ---------------------------------------------------------------------- the contract
    def trial_dir(self, trial_id: str) -> TrialDir:
        """The local folder of a trial (a local storage only)."""
        if self.remote:
            raise ValueError(f"{self.root}: a remote storage has no local trial folders")
        return TrialDir(os.path.join(self.base, TRIALS, trial_id))

    def read_trial(self, trial_id: str) -> StoredTrial:
        """Trial ``trial_id`` as stored: read once, judged by :func:`classify`."""
        rel = record_rel(trial_id)
        data = self.read(rel)
        self.reads += 1
        return classify(data, self.shown(rel), trial_id)

    def read_trials(self, trial_ids: Iterable[str]) -> dict[str, StoredTrial]:
        """:meth:`read_trial` of each id (each read once)."""
        out: dict[str, StoredTrial] = {}
        for tid in trial_ids:
            if tid not in out:
                out[tid] = self.read_trial(tid)
        return out

    def sweep_names(self) -> list[str]:
        """Folders directly under the root holding a ``sweep.json``, sorted."""
        return [d for d in self.list("", dirs=True) if self.is_file(manifest_rel(d))]

    def read_manifest(self, sweep: str) -> SweepManifest | None:
        """The manifest of sweep folder ``sweep``; None when there is none.

        Raises:
            ManifestError: there is one, and it does not parse.
        """
        data = self.read(manifest_rel(sweep))
        self.reads += 1
        if data is None:
            return None
        return SweepManifest.parse(data, self.shown(manifest_rel(sweep)))

    def write_manifest(self, manifest: SweepManifest) -> str:
        """Write a sweep's manifest (atomically); returns its relative path."""
        rel = manifest_rel(manifest.name)
        if self.fs is None:
            atomic_write_json(self.path(rel), manifest.to_dict())
        else:
            self.write(rel, (json.dumps(manifest.to_dict(), indent=1, allow_nan=False)
                             + "\n").encode())
        return rel

    def shown(self, rel: str) -> str:
        """How a file is named to the user: its path under the root as given."""
        return f"{self.root}/{rel}" if self.remote else os.path.normpath(
            os.path.join(self.root, rel))


# -------------------------------------------------------------------------------- the view
@dataclass
class SweepView:
    """One sweep of a view: its manifest and its planned trials (with the stored state)."""

    manifest: SweepManifest
    trials: list[tuple[ManifestEntry, StoredTrial]]


@dataclass
class StorageView:
    """A storage (or a sweep folder of one, or a folder of runs), read once.

    Args:
        root: what was loaded, as given.
        kind: ``storage`` (a storage root), ``sweep`` (one sweep's folder) or ``runs`` (a
            folder of ``maxup train`` runs, or a single run directory).
        sweeps: sweep name → its manifest and trials, in name order.
        unplanned: trials of ``trials/`` no loaded manifest lists (a storage root only),
            and the runs of a folder of runs.
        problems: everything found that could not be used, each once.
    """

    root: str
    kind: str
    sweeps: dict[str, SweepView] = field(default_factory=dict)
    unplanned: list[StoredTrial] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def trials(self) -> dict[str, StoredTrial]:
        """Every trial of the view once, by id (a trial two sweeps plan is one trial)."""
        out: dict[str, StoredTrial] = {}
        for sv in self.sweeps.values():
            for _, st in sv.trials:
                out.setdefault(st.trial_id, st)
        for st in self.unplanned:
            out.setdefault(st.trial_id, st)
        return out

    def counts(self) -> dict[str, int]:
        """Trials per state (each trial once), every state of :data:`STATES` present."""
        out = dict.fromkeys(STATES, 0)
        for st in self.trials().values():
            out[st.state] += 1
        return out

    def problems_of(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]


def _open(target: str | os.PathLike) -> Storage:
    store = Storage(target)
    if not store.remote and not os.path.isdir(store.root):
        raise UsageError(f"RESULTS: {os.fspath(target)!r} is not a directory; allowed: an "
                         "existing storage root, sweep folder or run directory (local "
                         "directory or URI)")
    if store.remote and not store.is_dir():
        raise UsageError(f"RESULTS: {os.fspath(target)!r} does not exist; allowed: an "
                         "existing storage root, sweep folder or run directory")
    return store


def read_view(target: str | os.PathLike, *, sweep: str | None = None) -> StorageView:
    """Read a storage once into one view: the reader every command uses.

    ``target`` may be a storage root (every sweep, plus trials no manifest lists), one sweep's
    folder (``S/<sweep>``: that sweep's trials, read from ``S/trials/``) or a folder of runs.
    With ``sweep``, ``target`` is the storage root and only that sweep is read.

    Raises:
        UsageError: the target does not exist or cannot be opened; a named ``sweep`` has no
            manifest.
    """
    store = _open(target)
    if sweep is not None:
        return _read_sweeps(store, [sweep], kind="sweep", root=os.fspath(target),
                            required=True)
    if store.is_file(MANIFEST):  # a sweep's folder
        parent = store.parent()
        view = _read_sweeps(parent, [store.name], kind="sweep", root=os.fspath(target))
        _strays(store, view, prefix="", claimed=set())
        return view
    names = store.sweep_names()
    if names or store.is_dir(TRIALS):
        view = _read_sweeps(store, names, kind="storage", root=os.fspath(target))
        planned = {st.trial_id for sv in view.sweeps.values() for _, st in sv.trials}
        for tid in store.list(TRIALS, dirs=True):
            if tid not in planned and store.is_file(record_rel(tid)):
                st = store.read_trial(tid)
                view.unplanned.append(st)
                if st.problem is not None:
                    view.problems.append(st.problem)
        _strays(store, view, prefix="", claimed={record_rel(t) for t in
                                                 store.list(TRIALS, dirs=True)})
        return view
    return _read_runs(store, os.fspath(target))


def _read_sweeps(store: Storage, names: list[str], *, kind: str, root: str,
                 required: bool = False) -> StorageView:
    view = StorageView(root, kind)
    seen: dict[str, StoredTrial] = {}
    for name in names:
        try:
            manifest = store.read_manifest(name)
        except ManifestError as exc:
            view.problems.append(Problem("manifest", store.shown(manifest_rel(name)),
                                         str(exc).split(": ", 1)[-1]))
            continue
        if manifest is None:
            if required:
                raise UsageError(f"{store.shown(name)!r}: no sweep manifest ({MANIFEST}) "
                                 "there; allowed: STORAGE/SWEEP of a launched sweep")
            continue
        planned = []
        for entry in manifest.trials:
            if entry.trial_id not in seen:
                seen[entry.trial_id] = store.read_trial(entry.trial_id)
                if seen[entry.trial_id].problem is not None:
                    view.problems.append(seen[entry.trial_id].problem)
            planned.append((entry, seen[entry.trial_id]))
        view.sweeps[name] = SweepView(manifest, planned)
    return view


def _strays(store: Storage, view: StorageView, prefix: str, claimed: set[str]) -> None:
    """Name every record-looking file of a storage that is not a trial's record."""
    for rel in store.walk(prefix, skip=(TUNE, TENSORBOARD, CHECKPOINTS, CERTIFY, RAY_TRAIN)):
        if is_record_name(rel) and rel not in claimed:
            view.problems.append(Problem(
                "stray", store.shown(rel), f"a record file outside {TRIALS}/<trial_id>/: "
                "not used (a storage's record of a trial is trials/<trial_id>/record.json)"))


def _read_runs(store: Storage, root: str) -> StorageView:
    """A folder of ``maxup train`` runs: every record file is a run; duplicates resolved by
    one rule (the most recently updated copy is used, the others named)."""
    view = StorageView(root, "runs")
    by_id: dict[str, StoredTrial] = {}
    for rel in store.walk("", skip=(TENSORBOARD, CHECKPOINTS, RAY_TRAIN)):
        if not is_record_name(rel):
            continue
        store.reads += 1
        st = classify(store.read(rel), store.shown(rel))
        if st.problem is not None:
            view.problems.append(st.problem)
        if st.state == CORRUPT:
            view.unplanned.append(st)
            continue
        kept = by_id.get(st.trial_id)
        if kept is None:
            by_id[st.trial_id] = st
            continue
        newer = str(st.record.updated or "") > str(kept.record.updated or "")
        use, drop = (st, kept) if newer else (kept, st)
        by_id[st.trial_id] = use
        view.problems.append(Problem("duplicate", drop.path, f"trial {st.trial_id} appears "
                                     f"twice; the copy used is {use.path} (the most recently "
                                     "updated, else the first found)", st.trial_id))
    view.unplanned += list(by_id.values())
    return view
