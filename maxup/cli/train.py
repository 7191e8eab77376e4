"""``maxup train CONFIG.yaml [--section.key=value …] [--out DIR] [--resume]``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

from maxup.cli import check_output_dir
from maxup.store import TrialDir

EXAMPLE = """example:
  maxup train configs/digits_maxup.yaml --maxup.m=4 --optim.lr=0.05 --out runs/digits-m4
  maxup train configs/cifar10_resnet110_maxup_cutout.yaml --data.root=/data/cifar --out runs/r110
  maxup train configs/digits_maxup.yaml --out runs/digits-m4 --resume   # continue a run

Any config key can be overridden with --section.key=value (values are read as YAML).
The run directory gets config.json (the resolved config), metrics.csv, metrics.jsonl,
record.json (final metrics and history), log.txt (the epoch lines printed here) and
checkpoints/last.pt. A run that crashes ends with a failed record.json (the traceback in its
failure.detail) and exit status 1. Relative data.root and model.weights paths are relative to
the directory the command runs from (config.json holds them absolute)."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLE
    parser.add_argument("config", help="YAML run config (see configs/)")
    parser.add_argument("--out", default=None,
                        help="run directory (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoints/last.pt if it exists")
    parser.add_argument("--workers", type=int, default=None,
                        help="data-parallel workers (shorthand for --train.workers)")
    parser.set_defaults(accepts_extra=True)


def run(args: argparse.Namespace) -> int:
    from maxup.platform import interrupt

    with interrupt.catching():
        return _command(args)


def _command(args: argparse.Namespace) -> int:
    from maxup.cli import parse_extra
    from maxup.config import check_registered_names, load_config, read_yaml
    from maxup.errors import UsageError
    from maxup.records import Status

    overrides = parse_extra(args.extra)
    _check_run_config(args.config, read_yaml(args.config))
    if args.workers is not None:
        overrides["train.workers"] = args.workers
    cfg = load_config(args.config, overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    check_output_dir("--out", out)
    run_files = TrialDir(out)
    if not args.resume and run_files.checkpoint.exists():
        raise UsageError(f"--out: {str(out)!r} already holds a run; allowed: a new directory, "
                         "or --resume to continue it")
    cfg = _with_absolute_paths(cfg, out, args.resume)
    # The first line, before torch is imported (seconds on a busy machine).
    workers = f", {cfg.train.workers} data-parallel workers on Ray Train" \
        if cfg.train.workers > 1 else ""
    print(f"train {args.config} -> {out}: {cfg.train.epochs} epochs of {cfg.model.name} on "
          f"{cfg.data.name}, maxup m = {cfg.maxup.m}{workers}"
          + ("; resuming" if args.resume else ""), flush=True)
    first_line_at = time.monotonic()
    check_registered_names(cfg)
    try:
        record = _train(cfg, out, run_files, args.resume, first_line_at)
    except KeyboardInterrupt:
        return _interrupted(args, cfg, out, overrides)
    final = record.get("final") or {}
    if record["status"] == Status.FAILED:
        print(f"run failed: {record['failure']['reason']} (see {run_files.record})")
        return 1
    if final.get("test_ppl") is not None:  # a language model
        result = f"val ppl {final.get('val_ppl'):.2f}, test ppl {final['test_ppl']:.2f}"
    else:
        result = f"test acc {final.get('test_acc', float('nan')):.2f}%"
    print(f"done: {result} after {final.get('epoch')} epochs; results in {out}")
    return 0


def _train(cfg, out: Path, run_files: TrialDir, resume: bool, first_line_at: float) -> dict:
    from maxup.platform.liveness import Heartbeat, run_describer

    with Heartbeat(run_describer(run_files.record, cfg.train.epochs),
                   last_line_at=first_line_at) as beat:
        return _train_run(cfg, out, run_files, resume, beat)


def _train_run(cfg, out: Path, run_files: TrialDir, resume: bool, beat) -> dict:
    from maxup import records
    from maxup.config import to_dict
    from maxup.errors import UsageError
    from maxup.platform import interrupt

    if cfg.train.workers > 1:
        from maxup.platform.distributed import train_distributed

        try:
            # the workers' epoch lines, on this console too
            with _echo_log(run_files.log, on_line=beat.printed):
                return train_distributed(cfg, out, resume=resume)
        except UsageError:
            raise
        except Exception as exc:  # Ray Train gave up after its retries: keep that on record
            # A Ctrl-C reaches Ray Train's controller too, which may end fit() with its own
            # error before the driver's KeyboardInterrupt: an interruption, not a failure.
            if interrupt.interrupted():
                raise KeyboardInterrupt from exc
            return records.record_crash(run_files.record, exc, config=to_dict(cfg))
    from maxup.engine import train

    log = _Log(run_files.log, on_line=beat.printed)
    try:
        return train(cfg, out, resume=resume, log=log)
    except UsageError:
        raise
    except Exception as exc:  # the engine ended the record failed (failure.detail)
        record = records.record_crash(run_files.record, exc, config=to_dict(cfg))
        log.write((record.get("failure") or {}).get("detail") or "")
        return record
    finally:
        log.close()


def _interrupted(args: argparse.Namespace, cfg, out: Path, overrides: dict) -> int:
    """After a Ctrl-C: say what was saved and the exact command that continues the run (exit
    status 130); a Ray Train run then exits at once, its Ray processes left to the watchdog."""
    import shlex

    from maxup.platform.interrupt import (
        exit_leaving_ray_to_the_watchdog,
        resume_words,
        trial_progress,
    )
    from maxup.store import override_args

    got, after = trial_progress(out)
    saved = resume_words(got, after, cfg.train.epochs)
    if cfg.train.workers > 1 and after is not None:  # Ray Train resumes from its own copy
        saved = (f"{got} of {cfg.train.epochs} epochs recorded; resumes from the last "
                 f"checkpoint Ray Train committed (epoch {after} at most)")
    given = {k: v for k, v in overrides.items() if k != "train.workers"}
    workers = f" --workers {args.workers}" if args.workers is not None else ""
    extra = override_args(given)
    command = (f"maxup train {shlex.quote(args.config)} --out {shlex.quote(str(out))} --resume"
               f"{workers}" + (f" {extra}" if extra else ""))
    print(f"maxup: interrupted; run {out}: {saved} "
          f"(record: {TrialDir(out).record}). Nothing of this run is left running. "
          f"To continue: {command}", file=sys.stderr, flush=True)
    if cfg.train.workers > 1:
        # Not ray.shutdown(): Ray Train's fit() still waits in its own thread, and its next
        # touch of a shut-down Ray ends the process with status 1 ("The core worker has
        # already been shutdown"). Exit at once instead; the watchdog stops Ray's processes.
        exit_leaving_ray_to_the_watchdog(130)
    return 130


def _check_run_config(path: str, data: dict) -> None:
    """Refuse a config file that is empty (it trained the defaults) or a search space."""
    from maxup.errors import UsageError

    if not data:
        raise UsageError(f"config file {path!r}: empty (or comments only); allowed: a run "
                         "config with at least one section (see configs/)")
    space_only = {"grid", "seeds", "base", "base_config", "resources", "concurrency",
                  "retries", "order_seed", "paper_table"}
    if set(data) & space_only:
        raise UsageError(f"config file {path!r}: got a search space (it has "
                         f"{', '.join(sorted(set(data) & space_only))}); allowed: a run "
                         f"config (configs/*.yaml); run a search space with: maxup sweep {path}")


def _with_absolute_paths(cfg, out: Path, resume: bool):
    """``cfg`` with its relative local paths (``data.root``, ``model.weights``) made absolute
    against the working directory (:mod:`maxup.paths`): what the run opens, and what its
    ``config.json`` and record store, whichever process it trains in.

    A run resumed here whose stored config spells ``model.weights`` relative (or with ``~``),
    as runs stored before paths were resolved do, keeps that spelling when it names the same
    file: the weights path is part of the run's identity, which the checkpoint must match, and
    this process opens the relative spelling just as well (only in-process runs: Ray Train
    workers would not).
    """
    from maxup.config import from_dict, to_dict
    from maxup.paths import resolve_path, resolve_paths

    base = os.getcwd()
    data = resolve_paths(to_dict(cfg), base)
    weights = data["model"]["weights"]
    if resume and cfg.train.workers == 1 and weights is not None:
        stored = _stored_weights(out)
        if stored != weights and resolve_path(stored, base) == weights:
            data["model"]["weights"] = stored
    return from_dict(data)


def _stored_weights(out: Path):
    """``model.weights`` of the run stored in ``out`` (its ``config.json``); None without one."""
    try:
        stored = json.loads((out / "config.json").read_text())["model"]["weights"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return stored if isinstance(stored, str) else None


class _Log:
    """Each epoch line on stdout and appended to ``OUT/log.txt``; the file is opened at the
    first line (after every refusal), so a refused run writes nothing."""

    def __init__(self, path: Path, on_line=None):
        self.path, self.fh, self.on_line = path, None, on_line

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        if self.on_line is not None:
            self.on_line()
        self.write(line)

    def write(self, line: str) -> None:
        """Append ``line`` to the file only."""
        if self.fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "a")
        self.fh.write(line + "\n")
        self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


@contextlib.contextmanager
def _echo_log(path: Path, interval_s: float = 0.5, on_line=None):
    """While the block runs, print what the data-parallel workers append to ``path``
    (``on_line()`` after each batch of lines printed)."""
    start = path.stat().st_size if path.exists() else 0
    stop = threading.Event()

    def follow() -> None:
        pos = start
        while True:
            done = stop.wait(interval_s)
            try:
                with open(path) as fh:
                    fh.seek(pos)
                    chunk = fh.read()
            except OSError:
                chunk = ""
            if chunk:
                complete = chunk[:chunk.rfind("\n") + 1] if not done else chunk
                pos += len(complete.encode())
                if complete:
                    sys.stdout.write(complete)
                    sys.stdout.flush()
                    if on_line is not None:
                        on_line()
            if done:
                return

    thread = threading.Thread(target=follow, name="maxup-log-echo", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
