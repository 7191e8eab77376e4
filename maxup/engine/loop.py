"""The loop: train a run epoch by epoch, evaluate, checkpoint, report, and write the record."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from maxup import identity, records
from maxup.checkpoint import load_checkpoint, save_checkpoint
from maxup.config import RunConfig, from_dict, to_dict
from maxup.determinism import deterministic_mode
from maxup.engine import progress
from maxup.engine.compiling import compile_model, compile_seconds
from maxup.engine.dist import DistContext, resolve_device
from maxup.engine.image import CSV_COLUMNS
from maxup.engine.nonfinite import NonFiniteLoss, NonFiniteMetric, check_finite
from maxup.engine.rng import global_rng_preserved
from maxup.engine.task import build_task
from maxup.errors import UsageError
from maxup.io import atomic_write_json, atomic_write_text
from maxup.store import TrialDir

#: Called after every epoch with its metrics and the checkpoint folder (or None).
Reporter = Callable[[dict, "Path | None"], None]


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


#: What a resumed run reads from its checkpoint.
RESUME_KEYS = ("config", "model", "optimizer", "epoch", "history")


def train(config: dict | RunConfig, out_dir: str | Path, *, reporter: Reporter | None = None,
          resume: bool = True, dist: DistContext | None = None,
          record_path: str | Path | None = None, record_extra: dict | None = None,
          checkpoint_in: str | Path | None = None,
          log: Callable[[str], None] | None = print, stop_after: int | None = None) -> dict:
    """Train one run and return its record.

    Args:
        config: a RunConfig or nested dict (validated here).
        out_dir: run directory: ``config.json``, ``metrics.csv``, ``metrics.jsonl``,
            ``checkpoints/last.pt`` and (by default) ``record.json``.
        reporter: called as ``reporter(epoch_metrics, checkpoint_dir_or_None)`` after each
            epoch (on every rank; Ray Train needs all ranks to report).
        resume: continue from ``checkpoints/last.pt`` when it exists.
        dist: data-parallel context (default: a plain single process).
        record_path: where to write the record (default ``out_dir/record.json``).
        record_extra: ``sweep``, ``axes``, ``paper_table`` for sweep trials; ``environment``
            (facts merged into the record's environment, e.g. the resources Ray granted).
        checkpoint_in: resume from this checkpoint file instead of ``checkpoints/last.pt``
            (a Ray Train worker restores the run's latest committed checkpoint here).
        log: one summary line per epoch goes here (None: silent).
        stop_after: train only the config's first ``stop_after`` epochs (its schedule
            unchanged; ``maxup verify`` reruns a prefix of a stored trial); the record then
            stays ``running``. None: every epoch.

    The caller's global Python, NumPy and torch RNG states, and its deterministic-algorithm
    settings (``train.deterministic``, :mod:`maxup.determinism`), are the same on return (or
    on an exception) as on entry; torch's thread settings are left alone.
    """
    cfg = config if isinstance(config, RunConfig) else from_dict(config)
    dist = dist or DistContext()
    device = dist.device or resolve_device(cfg.train.device)
    with global_rng_preserved(device), deterministic_mode(cfg.train.deterministic, device):
        try:
            return _train(cfg, Path(out_dir), device=device, dist=dist, reporter=reporter,
                          resume=resume, record_path=record_path, record_extra=record_extra,
                          checkpoint_in=checkpoint_in, log=log, stop_after=stop_after)
        except Exception as exc:
            # Any crash but a refusal (out of memory, a bug, a lost file) ends the record
            # failed, its traceback in failure.detail; never a "running" record forever.
            if dist.is_main and not isinstance(exc, UsageError):
                records.record_crash(record_path or TrialDir(out_dir).record, exc,
                                     config=to_dict(cfg), extra=record_extra)
            raise
        finally:
            progress.clear()


def _train(cfg: RunConfig, out_dir: Path, *, device: torch.device, dist: DistContext,
           reporter: Reporter | None, resume: bool, record_path: str | Path | None,
           record_extra: dict | None, checkpoint_in: str | Path | None,
           log: Callable[[str], None] | None, stop_after: int | None = None) -> dict:
    """The body of :func:`train`, run with the caller's global RNG states set aside."""
    cfg_dict = to_dict(cfg)
    run_dir = TrialDir(out_dir)
    ckpt_path = run_dir.checkpoint
    record_path = Path(record_path) if record_path else run_dir.record
    extra = record_extra or {}
    log = log if dist.is_main else None

    task = build_task(cfg, device, dist)
    model: nn.Module = task.model
    history: list[dict] = []
    start_epoch = 0
    created = None
    source = Path(checkpoint_in) if checkpoint_in else ckpt_path
    if resume and source.exists():
        state = load_checkpoint(source, require=RESUME_KEYS)
        diff = identity.identity_differences(state["config"], cfg_dict)
        if diff:
            raise UsageError(f"resume: {diff[0]} differs from the checkpoint in {source}; "
                             "allowed: the same config (use a new --out to start afresh)")
        task.check_resumable(state["model"], source)
        _unwrap(model).load_state_dict(state["model"])
        task.optimizer.load_state_dict(state["optimizer"])
        task.load_checkpoint_state(state.get("task"))
        start_epoch, history = state["epoch"], list(state["history"])
        old = records.read_record(record_path)
        created = old.get("created") if old else None
        if log:
            note = getattr(task, "resume_note", None)  # e.g. the window a partial epoch is at
            log(f"resumed from {source} after epoch {start_epoch}" + (f"; {note}" if note else ""))
    compiled = cfg.train.compile and getattr(task, "compilable", False)
    if compiled:
        # The compiled module shares the parameters; checkpoints take task.model.
        model = compile_model(model, cfg.train.compile_mode)
    if dist.world_size > 1 and torch.distributed.is_initialized() and task.ddp:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    # bf16 autocast applies on CUDA only; the record states the arithmetic actually used.
    precision = cfg.train.precision if device.type == "cuda" else "fp32"
    env = records.environment(device=str(device), workers=dist.world_size, precision=precision,
                              deterministic=cfg.train.deterministic)
    env.update(task.record_facts())
    env.update(extra.get("environment") or {})
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "config.json", cfg_dict)

    def make_record(status: records.Status, failure: dict | None = None) -> dict:
        return records.build_record(
            config=cfg_dict, history=history, status=status, timings=_totals(history), env=env,
            failure=failure, sweep=extra.get("sweep"), axes=extra.get("axes"),
            paper_table=extra.get("paper_table"), created=created,
            certification=extra.get("certification"))

    def save(finished: int) -> None:
        """Write ``checkpoints/last.pt`` (main rank only) after ``finished`` epochs."""
        if dist.is_main:
            save_checkpoint(ckpt_path, config=cfg_dict, model=task.model, optimizer=task.optimizer,
                            epoch=finished, history=history, task=task.checkpoint_state())

    if hasattr(task, "save_mid_epoch"):
        # A task that checkpoints inside an epoch (language modelling) calls this on every rank
        # with the number of finished epochs; its checkpoint_state() holds the partial epoch.
        task.save_mid_epoch = save
    failure = None
    epoch = start_epoch
    last = cfg.train.epochs if stop_after is None else min(stop_after, cfg.train.epochs)
    try:
        for epoch in range(start_epoch, last):
            t0, c0 = time.perf_counter(), compile_seconds() if compiled else 0.0
            metrics = task.train_epoch(model, epoch, dist, cfg.train.progress)
            t1 = time.perf_counter()
            # Unwrapped: ranks may hold one eval batch more or less, and DDP's forward
            # would wait on collectives; the sums are all-reduced once at the end instead.
            metrics.update(task.evaluate(_unwrap(model), epoch, dist))
            metrics["eval_s"] = time.perf_counter() - t1
            # A task resumed inside an epoch says how long the epoch ran before (its train_s
            # already counts it), so the epoch's wall time is the whole epoch's too.
            metrics["wall_s"] = time.perf_counter() - t0 + metrics.pop("resumed_s", 0.0)
            if compiled:
                metrics["compile_s"] = compile_seconds() - c0  # included in the times above
            history.append(metrics)
            check_finite(metrics, epoch + 1, task.finite_keys)
            done = epoch + 1
            checkpoint_now = done % cfg.train.checkpoint_every == 0 or done == cfg.train.epochs
            if dist.is_main:
                if checkpoint_now:
                    save(done)
                _write_metrics(out_dir, history, task.csv_columns)
                status = (records.Status.COMPLETED if done == cfg.train.epochs
                          else records.Status.RUNNING)
                records.write_record(record_path, make_record(status))
            if log:
                log(task.summary_line(metrics, cfg.train.epochs))
            if reporter is not None:
                reporter(dict(metrics), ckpt_path.parent if checkpoint_now else None)
    except NonFiniteLoss as exc:
        failure = {"reason": exc.reason, "epoch": exc.epoch, "step": exc.step,
                   "value": str(exc.value)}
        if isinstance(exc, NonFiniteMetric):
            failure["metric"] = exc.metric
        if dist.is_main:
            records.write_record(record_path, make_record(records.Status.FAILED, failure))
        if log:
            log(f"FAILED: {exc}")
    finished = len(history) >= cfg.train.epochs
    record = make_record(records.Status.FAILED if failure else
                         records.Status.COMPLETED if finished else records.Status.RUNNING, failure)
    if dist.is_main and failure is None:
        # Also when no epoch ran: a run killed after its last checkpoint but before its
        # record was written resumes straight to here and must still leave a completed record.
        records.write_record(record_path, record)
    return record


def _totals(history: list[dict]) -> dict:
    wall = sum(h["wall_s"] for h in history)
    train_s = sum(h["train_s"] for h in history)
    sel = sum(h["selection_s"] for h in history)
    images = sum(h.get("images_per_s", 0.0) * h["train_s"] for h in history)
    tokens = sum(h.get("tokens_per_s", 0.0) * h["train_s"] for h in history)
    return {
        "wall_s": wall,
        "train_s": train_s,
        "eval_s": sum(h["eval_s"] for h in history),
        "selection_s": sel,
        "selection_share": sel / train_s if train_s > 0 else 0.0,
        "images_per_s": images / train_s if train_s > 0 else 0.0,
        **({"compile_s": sum(h.get("compile_s", 0.0) for h in history)}
           if any("compile_s" in h for h in history) else {}),
        **({"tokens_per_s": tokens / train_s if train_s > 0 else 0.0} if tokens else {}),
    }


def _write_metrics(out_dir: Path, history: list[dict],
                   columns: tuple[str, ...] = CSV_COLUMNS) -> None:
    """Rewrite metrics.csv and metrics.jsonl from the history (each epoch exactly once)."""
    lines = [",".join(columns)]
    for h in history:
        lines.append(",".join("" if h.get(c) is None else str(h.get(c)) for c in columns))
    atomic_write_text(out_dir / "metrics.csv", "\n".join(lines) + "\n")
    atomic_write_text(out_dir / "metrics.jsonl",
                      "".join(json.dumps(records._finite(h)) + "\n" for h in history))
