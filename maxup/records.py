"""Trial records: the one durable JSON file per run (schema in docs/records.md).

The engine builds a record from a run's history and writes it; every reader — the sweep's
skip/resume logic, the certification phase, the analysis loader — parses it with
:func:`parse_record` into one typed :class:`TrialRecord` (with a :class:`Status`). Plain JSON,
written atomically, never pickled. This module imports neither torch nor Ray at import time
(the analysis package reads records through it).
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import math
import os
import platform
import socket
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maxup import identity
from maxup.io import atomic_write_json

SCHEMA = "maxup.trial/1"


class Status(enum.StrEnum):
    """Where a trial stands. Equal to its JSON string (``Status.COMPLETED == "completed"``)."""

    RUNNING = "running"  # interim: rewritten after every epoch while training
    COMPLETED = "completed"  # every epoch trained; the only status that enters statistics
    FAILED = "failed"  # stopped for good (non-finite loss, an exception, given up by Ray)


class RecordError(ValueError):
    """A file or object is not a usable trial record (the message says why)."""


@dataclass
class TrialRecord:
    """One trial's record (docs/records.md), as every reader sees it.

    ``to_dict()`` gives the JSON document; ``parse_record(rec.to_dict()) == rec``.
    """

    trial_id: str
    status: Status
    config: dict
    seed: int | None = None
    sweep: str | None = None
    axes: dict = field(default_factory=dict)
    paper_table: str | None = None
    final: dict = field(default_factory=dict)
    best: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    failure: dict | None = None
    certification: dict | None = None
    certifications: dict = field(default_factory=dict)  # certification id → summary
    created: str | None = None
    updated: str | None = None
    schema: str = SCHEMA

    @property
    def completed(self) -> bool:
        return self.status is Status.COMPLETED

    def certification_for(self, config: dict) -> dict | None:
        """The stored certification made with ``config``'s ``certify`` settings, if any.

        Args:
            config: a resolved run config of this trial (its certify section may differ from
                the one the trial was trained with).
        """
        cid = identity.certification_id(config)
        if cid in self.certifications:
            return self.certifications[cid]
        if self.certification is not None and cid == identity.certification_id(self.config):
            return self.certification  # written before certifications were keyed by id
        return None

    def add_certification(self, config: dict, summary: dict) -> None:
        """Store a certification of this trial made with ``config``'s ``certify`` settings.

        ``certification`` (the single-certification field of the schema) keeps the one made
        with the record's own config, or the latest when none was.
        """
        self.certifications[identity.certification_id(config)] = summary
        if (self.certification is None
                or identity.certification_id(config) == identity.certification_id(self.config)):
            self.certification = summary

    def to_dict(self) -> dict:
        """The JSON document, in the documented field order."""
        return {
            "schema": self.schema, "sweep": self.sweep, "trial_id": self.trial_id,
            "status": str(self.status), "config": self.config, "seed": self.seed,
            "axes": self.axes, "paper_table": self.paper_table, "final": self.final,
            "best": self.best, "history": self.history, "timings": self.timings,
            "environment": self.environment, "failure": self.failure,
            "certification": self.certification, "certifications": self.certifications,
            "created": self.created, "updated": self.updated,
        }


def _schema_ok(schema: Any) -> bool:
    if not isinstance(schema, str) or not schema.startswith("maxup.trial/"):
        return False
    version = schema.split("/", 1)[1]
    return version == "1" or version.startswith("1.")


def _typed(data: dict, key: str, types: tuple, default: Any) -> Any:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, types):
        raise RecordError(f"field {key!r} is {type(value).__name__}, expected "
                          + " or ".join(t.__name__ for t in types))
    return value


def parse_record(data: dict | str | bytes) -> TrialRecord:
    """Parse and validate one record; the one function every reader of records calls.

    Args:
        data: the record as a JSON object or its JSON text.

    Raises:
        RecordError: not JSON, not an object, another schema, or a field of the wrong type;
            the message says which.
    """
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RecordError(f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RecordError("not a JSON object")
    if not _schema_ok(data.get("schema")):
        raise RecordError(f"schema is {data.get('schema')!r}, expected {SCHEMA!r}")
    config = data.get("config")
    if not isinstance(config, dict) or not isinstance(data.get("trial_id"), str):
        raise RecordError("missing 'config' object or 'trial_id'")
    try:
        status = Status(data.get("status"))
    except ValueError:
        raise RecordError(f"status {data.get('status')!r} is not one of "
                          + ", ".join(s.value for s in Status)) from None
    seed = data.get("seed", config.get("seed"))
    paper_table = data.get("paper_table")
    history = _typed(data, "history", (list,), [])
    best = _typed(data, "best", (dict,), {})
    if is_lm_history(history):
        # Records written before best_entry knew perplexities hold the first epoch here.
        best = best_entry(history)
    return TrialRecord(
        schema=data["schema"], trial_id=data["trial_id"], status=status, config=config,
        seed=config.get("seed") if seed is None else seed,
        sweep=_typed(data, "sweep", (str,), None),
        axes=_typed(data, "axes", (dict,), {}),
        paper_table=None if paper_table is None else str(paper_table),
        final=_typed(data, "final", (dict,), {}), best=best, history=history,
        timings=_typed(data, "timings", (dict,), {}),
        environment=_typed(data, "environment", (dict,), {}),
        failure=_typed(data, "failure", (dict,), None),
        certification=_typed(data, "certification", (dict,), None),
        certifications=_typed(data, "certifications", (dict,), {}),
        created=data.get("created"), updated=data.get("updated"))


def is_lm_history(history: list) -> bool:
    """Whether a history is a language model's: per-epoch validation perplexities, no
    accuracy."""
    entries = [h for h in history if isinstance(h, dict)]
    return (any(isinstance(h.get("epoch_val_ppl"), int | float) for h in entries)
            and not any("test_acc" in h for h in entries))


def best_entry(history: list[dict]) -> dict:
    """The epoch a record's ``best`` holds (the table's "best" column reads it).

    Image tasks: the highest test accuracy, the earliest epoch on ties. Language models: the
    epoch with the lowest validation perplexity of its own (``epoch_val_ppl``), the earliest on
    ties: the model the run keeps, whose test perplexity is reported.

    Args:
        history: per-epoch metric dicts.
    """
    if not history:
        return {}
    if is_lm_history(history):
        def val(h: dict) -> float:
            v = h.get("epoch_val_ppl")
            return float(v) if isinstance(v, int | float) and math.isfinite(v) else math.inf

        return dict(min(history, key=lambda h: (val(h), h["epoch"])))
    return dict(max(history, key=lambda h: (h.get("test_acc") or -1.0, -h["epoch"])))


def _metric_range(key: str) -> tuple[float, float, str] | None:
    """The range of a metric, by its name: accuracies in percent, perplexities, losses."""
    if key.endswith(("_acc", "_top5")):
        return 0.0, 100.0, "a percentage in [0, 100]"
    if key.endswith("_ppl") or key == "perplexity":
        return 1.0, math.inf, "a finite perplexity >= 1"
    if key.endswith("_loss"):
        return 0.0, math.inf, "a finite loss >= 0"
    return None


def metric_problem(rec: TrialRecord) -> str | None:
    """Why a completed record's metrics cannot be trusted, or None when they can.

    A completed record's ``final`` and ``best`` (what tables read) must hold numbers
    where metrics belong: accuracies (``*_acc``, ``*_top5``) in [0, 100], perplexities
    (``*_ppl``) >= 1, losses (``*_loss``) >= 0. A NaN or infinite value is not a problem
    here: the tables count such a seed as diverged. Failed and running records may hold
    failure evidence (``"nan"`` strings) and are not checked.

    Args:
        rec: a parsed record.
    """
    if not rec.completed:
        return None
    parts = [("final", rec.final), ("best", rec.best)]
    for where, metrics in parts:
        if not isinstance(metrics, dict):
            return f"{where} is {type(metrics).__name__}, expected an object"
        for key, value in metrics.items():
            rng = _metric_range(str(key))
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                if rng is not None:
                    return f"{where}.{key} is {value!r}, expected {rng[2]}"
                continue
            if not math.isfinite(value):
                continue  # a diverged seed: counted as such by every table, never in a mean
            if rng is not None and not rng[0] <= value <= rng[1]:
                return f"{where}.{key} is {value!r}, expected {rng[2]}"
    return None


def now() -> str:
    """Current UTC time, ISO-8601."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def trial_id(config: dict) -> str:
    """The trial id of a resolved config (the rule: :mod:`maxup.identity`).

    Args:
        config: nested resolved run config (``maxup.config.to_dict``).
    """
    return identity.trial_id(config)


def _git(*args: str) -> str | None:
    """Output of a git command in this package's repository; None outside one or on error."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _git_commit() -> str | None:
    out = _git("rev-parse", "HEAD")
    return out.strip() or None if out is not None else None


def _git_dirty() -> bool | None:
    """Whether tracked files differ from the commit (None when unknown)."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out.strip())


def code_version() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the code this process runs: the package's git checkout, or
    (None, None) outside one. The same facts every record's environment stores."""
    return _git_commit(), _git_dirty()


def environment(device: str = "cpu", workers: int = 1, *, precision: str | None = None,
                deterministic: bool | None = None) -> dict:
    """Versions, machine facts and the run's provenance, stored in every record.

    Never part of the trial id: they say where and with what code a trial ran, which
    ``maxup verify`` uses to decide what a rerun must reproduce bit for bit.

    Args:
        device: the torch device the run trained on (``"cpu"``, ``"cuda:0"``).
        workers: data-parallel workers.
        precision: the arithmetic actually used (``"fp32"``, ``"bf16"``; ``"fp32+tf32"`` when
            CUDA's TF32 tensor cores do fp32 matmuls/convolutions).
        deterministic: whether deterministic algorithms were on (``train.deterministic``).
    """
    import torch

    import maxup

    ray_version = None
    if "ray" in sys.modules:
        ray_version = getattr(sys.modules["ray"], "__version__", None)
    on_cuda = str(device).startswith("cuda")
    commit, dirty = code_version()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "maxup": maxup.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "ray": ray_version,
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "device": device,
        "device_name": _device_name(device) if on_cuda else cpu_name(),
        # ATen's CPU kernels are compiled per instruction set and picked by this at run time:
        # two CPUs with another capability may round differently.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "precision": precision,
        "tf32": _tf32() if on_cuda else None,
        "deterministic": deterministic,
        "threads": torch.get_num_threads(),
        "workers": workers,
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
    }


def provenance(env: dict) -> str:
    """One line saying what code, software and device a record's ``environment`` ran on,
    as ``maxup status`` and ``maxup report`` show it; facts a record lacks (older records)
    are named as not recorded."""
    def known(key: str):
        value = env.get(key)
        return None if value is None or (isinstance(value, float) and value != value) else value

    commit = known("git_commit")
    parts = [f"commit {str(commit)[:8]}" + (" + uncommitted changes" if known("git_dirty")
                                            is True else "") if commit else "commit unknown"]
    device = str(known("device") or "cpu")
    name = known("device_name") or f"{device} model not recorded"
    capability = known("cpu_capability")
    parts.append(f"{name}" + (f" ({capability})" if capability and device == "cpu" else ""))
    software = f"torch {known('torch') or '?'}"
    if device.startswith("cuda"):
        software += f", CUDA {known('cuda') or '?'}, cuDNN {known('cudnn') or '?'}"
    parts.append(software)
    precision = known("precision")
    tf32 = known("tf32")
    parts.append((precision or "precision not recorded")
                 + (f" (TF32: {tf32})" if precision == "fp32" and tf32 else ""))
    det = known("deterministic")
    parts.append("deterministic" if det is True else "not deterministic" if det is False
                 else "determinism not recorded")
    threads = known("threads")
    if threads is not None:
        parts.append(f"{int(threads)} thread{'s' if int(threads) != 1 else ''}")
    return "; ".join(parts)


def _device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def _tf32() -> str:
    """Which fp32 CUDA operations TF32 tensor cores may compute: conv, matmul, both or off."""
    import torch

    on = [name for name, flag in (("conv", torch.backends.cudnn.allow_tf32),
                                  ("matmul", torch.backends.cuda.matmul.allow_tf32)) if flag]
    return "+".join(on) or "off"


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def certified_accuracy(rows: list[dict], radii) -> list[float]:
    """Percent of a certification's per-image rows certified correct at each radius:
    ``correct and radius >= r`` (Cohen et al.'s ``analyze.py``). Abstentions (prediction -1)
    count as wrong.

    Args:
        rows: the certification's rows (non-empty), each with ``correct`` and ``radius``.
        radii: l2 radii to report.
    """
    if len(rows) == 0:
        raise ValueError("certified_accuracy needs at least one certified image")
    total = len(rows)
    return [
        100.0 * sum(1 for row in rows if row["correct"] and row["radius"] >= r) / total
        for r in radii
    ]


def _finite(value: Any) -> Any:
    """NaN/inf become strings so the record stays valid JSON (they are failure evidence)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def build_record(*, config: dict, history: list[dict], status: Status | str, timings: dict,
                 env: dict, failure: dict | None = None, sweep: str | None = None,
                 axes: dict | None = None, paper_table: str | None = None,
                 certification: dict | None = None, created: str | None = None) -> dict:
    """Assemble a record's JSON document (see docs/records.md) from a run's per-epoch history.

    Args:
        config: nested resolved run config.
        history: per-epoch metric dicts, epochs in order, each once.
        status: a :class:`Status` value.
        timings: totals (wall_s, train_s, eval_s, selection_s, selection_share, images_per_s).
        env: :func:`environment` output.
        failure: reason/epoch/step/value when failed.
        sweep, axes, paper_table: sweep context (None/{} for a single run).
        certification: randomized-smoothing summary, if any.
        created: creation timestamp to keep across rewrites.
    """
    final = dict(history[-1]) if history else {}
    best = best_entry(history)
    rec = TrialRecord(
        trial_id=trial_id(config), status=Status(status), config=config, seed=config["seed"],
        sweep=sweep, axes=axes or {}, paper_table=paper_table, final=final, best=best,
        history=history, timings=timings, environment=env, failure=failure,
        created=created or now(), updated=now())
    if certification is not None:
        rec.add_certification(config, certification)
    return _finite(rec.to_dict())


def write_record(path: str | os.PathLike, record: dict | TrialRecord) -> Path:
    """Write a record atomically, keeping what the record it replaces already established.

    A run rewrites its record after every epoch; ``created`` stays the time of the first
    write of that trial's record, and certifications stored earlier (the certification
    phase writes them into a finished record) are kept when the new version carries none.
    ``record`` is updated in place to match when it is a dict.
    """
    if isinstance(record, TrialRecord):
        record = record.to_dict()
    old = load_record(path)
    if old is not None and old.trial_id == record.get("trial_id"):
        if old.created:
            record["created"] = old.created
        if old.certifications and not record.get("certifications"):
            record["certifications"] = old.certifications
            record["certification"] = record.get("certification") or old.certification
    return atomic_write_json(path, _finite(record))


def load_record(path: str | os.PathLike) -> TrialRecord | None:
    """Read and parse a record file; None when missing, unreadable or not a valid record."""
    try:
        return parse_record(Path(path).read_bytes())
    except (OSError, RecordError):
        return None


def read_record(path: str | os.PathLike) -> dict | None:
    """The JSON document of a valid record file (see :func:`load_record`), or None."""
    rec = load_record(path)
    return None if rec is None else rec.to_dict()


def mark_failed(path: str | os.PathLike, *, config: dict, reason: str, extra: dict | None = None,
                detail: str | None = None) -> dict:
    """Set a trial's record to failed, keeping whatever history it already holds."""
    extra = extra or {}
    rec = load_record(path)
    if rec is None:
        rec = parse_record(build_record(
            config=config, history=[], status=Status.FAILED, timings={}, env=environment(),
            sweep=extra.get("sweep"), axes=extra.get("axes"),
            paper_table=extra.get("paper_table")))
    last = rec.history[-1]["epoch"] if rec.history else 0
    rec.status = Status.FAILED
    rec.failure = {"reason": reason, "epoch": last + 1, "step": None, "value": None,
                   "detail": detail}
    rec.updated = now()
    doc = rec.to_dict()
    write_record(path, doc)
    return doc


def crash_reason(exc: BaseException) -> str:
    """A crash's one-line reason for ``failure.reason``: its type and its message's first line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def record_crash(path: str | os.PathLike, exc: BaseException, *, config: dict,
                 extra: dict | None = None) -> dict:
    """End the record of a run that raised ``exc`` as failed (the reason in one line, the
    traceback in ``failure.detail``), keeping its history; a completed record stays completed.

    Args:
        path: the record file.
        exc: the exception the run died of.
        config: the run's resolved config (for a run that crashed before its first record).
        extra: ``sweep``, ``axes``, ``paper_table`` of a sweep trial.
    """
    rec = load_record(path)
    if rec is not None and rec.completed:
        return rec.to_dict()
    detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return mark_failed(path, config=config, extra=extra, reason=crash_reason(exc),
                       detail=detail[-20_000:])
