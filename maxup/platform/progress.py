"""What a running sweep prints: a line per trial start/finish, and Tune's status table."""

from __future__ import annotations

from collections.abc import Callable

from ray.tune import CLIReporter
from ray.tune.callback import Callback

from maxup import records


def status_reporter(axes: list[str]) -> CLIReporter:
    """Tune's status table with the sweep's varying axes, the epoch and the latest accuracy."""
    params = {"trial/id": "trial", **{f"trial/{a}": a for a in axes}}
    return CLIReporter(parameter_columns=params,
                       metric_columns={"epoch": "epoch", "test_acc": "test acc %"},
                       max_report_frequency=30, max_progress_rows=40)


class StartFinishLines(Callback):
    """Prints one line when a trial starts and one when it ends (with its record's verdict)."""

    def __init__(self, layout, echo: Callable[[str], None]):
        self.layout, self.echo = layout, echo

    @staticmethod
    def _label(trial) -> str:
        t = trial.config.get("trial", {})
        axes = ", ".join(f"{k}={v}" for k, v in t.items() if k != "id")
        return f"{t.get('id')} ({axes})"

    def on_trial_start(self, iteration, trials, trial, **info):
        self.echo(f"[start]  {self._label(trial)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        tid = trial.config.get("trial", {}).get("id")
        rec = records.load_record(self.layout.record(tid))
        if rec is not None and rec.status is records.Status.FAILED:
            self.echo(f"[failed] {self._label(trial)}: {(rec.failure or {}).get('reason')}")
        else:
            acc = rec.final.get("test_acc") if rec is not None else None
            acc_s = f"test acc {acc:.2f}%" if isinstance(acc, float) else "no metrics"
            self.echo(f"[done]   {self._label(trial)}: {acc_s}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.echo(f"[error]  {self._label(trial)}: gave up after the configured retries")
