"""What a running sweep prints: a compact line per finished trial and a status line with an ETA.

:class:`SweepProgress` (a Tune callback) prints one line when a trial ends (its record's
verdict, its time and its estimate) and a status line — done / running / failed / pending,
elapsed, ETA. On a terminal the status line is a live ``tqdm`` bar refreshed about once a
second; when stdout is not a terminal (logs, CI) it is a plain line after each finished trial.
The ETA list-schedules the remaining trials' estimated costs (:mod:`maxup.platform.cost`),
scaled by how long finished trials took against their estimates. Tune's own status table is
kept behind ``--verbose`` (:func:`status_reporter`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from ray.tune import CLIReporter
from ray.tune.callback import Callback

from maxup import records
from maxup.platform import cost


def status_reporter(axes: list[str]) -> CLIReporter:
    """Tune's status table: the varying axes, the epoch, the latest accuracy or perplexity."""
    params = {"trial/id": "trial", **{f"trial/{a}": a for a in axes}}
    return CLIReporter(parameter_columns=params,
                       metric_columns={"epoch": "epoch", "test_acc": "test acc %",
                                       "val_ppl": "val ppl"},
                       max_report_frequency=30, max_progress_rows=40)


def headline(rec: records.TrialRecord | None) -> str:
    """A finished trial's result in a few words: test accuracy, or a language model's
    validation and test perplexity; ``no metrics`` when the record holds neither."""
    final = rec.final if rec is not None else {}
    if isinstance(final.get("test_acc"), float):
        return f"test acc {final['test_acc']:.2f}%"
    if isinstance(final.get("test_ppl"), float):
        val = final.get("val_ppl")
        return (f"val ppl {val:.2f}, " if isinstance(val, float) else "") + \
            f"test ppl {final['test_ppl']:.2f}"
    return "no metrics"


def _label(trial) -> str:
    t = trial.config.get("trial", {})
    axes = ", ".join(f"{k}={v}" for k, v in t.items() if k != "id")
    return f"{t.get('id')} ({axes})"


def _tid(trial) -> str:
    return trial.config.get("trial", {}).get("id")


class SweepProgress(Callback):
    """Finished-trial lines and a live status line with an ETA.

    Args:
        layout: the sweep's layout (records are read from it).
        echo: where plain lines go (print).
        estimates: trial id → estimated seconds (None: unknown), for every pending trial.
        slots: trials at a time.
        verbose: also print a line when a trial starts.
        tty: live bar (default: whether stdout is a terminal).
    """

    def __init__(self, layout, echo: Callable[[str], None], estimates: dict[str, float | None],
                 slots: int, *, verbose: bool = False, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 epochs: dict[str, int] | None = None,
                 on_line: Callable[[], None] | None = None):
        self.layout, self.estimates, self.slots, self.verbose = layout, estimates, slots, verbose
        self.clock = clock
        self.epochs = epochs or {}  # trial id → its configured epochs
        self.at_epoch: dict[str, int] = {}  # trial id → the last epoch it reported
        self.on_line = on_line  # told whenever a line (or the live bar) was printed
        self.t0 = clock()
        self.started: dict[str, float] = {}
        self.done: dict[str, float] = {}  # trial id → measured seconds
        self.failed: set[str] = set()
        self.tty = sys.stdout.isatty() if tty is None else tty
        self._last = 0.0
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=len(estimates), file=sys.stdout, dynamic_ncols=True,
                            bar_format="{n_fmt}/{total_fmt} |{bar:20}| {postfix}")
            self.echo = self.bar.write
        else:
            self.echo = echo

    def __getstate__(self) -> dict:
        # Tune pickles its run config (callbacks included) into the experiment's
        # tuner.pkl, which this platform never restores from: the live parts (the output
        # function, the heartbeat hook, the terminal bar) stay out of that copy.
        return {k: v for k, v in self.__dict__.items() if k not in ("echo", "on_line", "bar")}

    # ---------------------------------------------------------------- the numbers
    def factor(self) -> float:
        """Measured ÷ estimated over finished trials (1 before any finished)."""
        pairs = [(s, self.estimates.get(t)) for t, s in self.done.items()
                 if self.estimates.get(t)]
        est = sum(e for _, e in pairs)
        return sum(s for s, _ in pairs) / est if est > 0 else 1.0

    def eta(self) -> float | None:
        """Seconds until the last pending trial ends (None when a cost is unknown)."""
        now, f = self.clock(), self.factor()
        running = [t for t in self.started if t not in self.done and t not in self.failed]
        pending = [t for t in self.estimates if t not in self.started]
        if any(self.estimates.get(t) is None for t in running + pending):
            return None
        left = [max(0.0, self.estimates[t] * f - (now - self.started[t])) for t in running]
        return cost.remaining_wall(left, [self.estimates[t] * f for t in pending], self.slots)

    def status(self) -> str:
        n_run = sum(t not in self.done and t not in self.failed for t in self.started)
        n_done = len(self.done)
        pending = len(self.estimates) - len(self.started)
        return (f"{n_done} done, {n_run} running, {len(self.failed)} failed, {pending} pending;"
                f" elapsed {cost.fmt_duration(self.clock() - self.t0)}, "
                f"ETA {cost.fmt_duration(self.eta())}")

    def heartbeat(self) -> str:
        """The status line with each running trial's epoch (what the periodic line says)."""
        running = [t for t in self.started if t not in self.done and t not in self.failed]
        where = ", ".join(f"{t} epoch {self.at_epoch.get(t, 0)}/{self.epochs.get(t, '?')}"
                          for t in running)
        return f"[status] {self.status()}" + (f"; running: {where}" if where else "")

    def _refresh(self, force: bool = False) -> None:
        if self.bar is None:
            return
        now = self.clock()
        if force or now - self._last >= 1.0:
            self._last = now
            self.bar.n = len(self.done) + len(self.failed)
            self.bar.set_postfix_str(self.status(), refresh=True)
            if self.on_line is not None:  # the live bar is the heartbeat on a terminal
                self.on_line()

    # ---------------------------------------------------------------- Tune's hooks
    def on_step_end(self, iteration, trials, **info):
        self._refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if isinstance(result.get("epoch"), int):
            self.at_epoch[_tid(trial)] = result["epoch"]

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.setdefault(_tid(trial), self.clock())
        if self.verbose:
            self.echo(f"[start]  {_label(trial)}")
        self._refresh(force=True)

    def _finished(self, trial, gave_up: bool) -> None:
        tid = _tid(trial)
        took = self.clock() - self.started.get(tid, self.clock())
        est = self.estimates.get(tid)
        timing = f" in {cost.fmt_duration(took)}" + (f" (est. {cost.fmt_duration(est)})"
                                                     if est is not None else "")
        rec = records.load_record(self.layout.record(tid))
        failed = gave_up or (rec is not None and rec.status is records.Status.FAILED)
        if failed:
            self.failed.add(tid)
            reason = (rec.failure or {}).get("reason") if rec is not None else None
            why = "; ".join(str(x) for x in (reason, "gave up after the configured retries"
                                             if gave_up else None) if x)
            self.echo(f"[failed] {_label(trial)}: {why}{timing}")
        else:
            self.done[tid] = took
            self.echo(f"[done]   {_label(trial)}: {headline(rec)}{timing}")
        if self.bar is None:
            self.echo(f"[status] {self.status()}")
        self._refresh(force=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finished(trial, False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finished(trial, True)

    def on_experiment_end(self, trials, **info):
        if self.bar is not None:
            self._refresh(force=True)
            self.bar.close()
