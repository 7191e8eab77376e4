"""Views of a trial's curves where researchers look for them: TensorBoard (and MLflow).

The JSON record stays the source of truth; these are copies written as the trial trains.

- **TensorBoard**: every sweep trial writes event files with ``torch.utils.tensorboard``'s
  ``SummaryWriter`` (the ``tensorboard`` package) into
  ``trials/<trial_id>/tensorboard/<axes>/``, the run named by its arm's axes and seed
  (``maxup.m=4,seed=0``), one scalar per metric and epoch (``train/loss``, ``test/acc``, …),
  and the trial's config as text. ``tensorboard --logdir STORAGE`` shows every trial, live.
- **MLflow** (optional, ``pip install maxup[mlflow]``): with a tracking URI
  (``--mlflow file:/path/mlruns`` needs no server) each trial is an MLflow run named by its
  trial id, with its arm's axes as tags, the flattened config as params and the same metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

from maxup.platform.space import _flatten
from maxup.store import TrialDir

#: record metric → TensorBoard / MLflow tag
SCALARS = {
    "train_loss": "train/loss", "train_acc": "train/acc", "test_loss": "test/loss",
    "test_acc": "test/acc", "test_top5": "test/top5", "lr": "train/lr",
    "maxup_gap": "maxup/gap", "maxup_m": "maxup/m", "wall_s": "time/epoch_s",
    "images_per_s": "time/images_per_s", "val_ppl": "val/ppl", "test_ppl": "test/ppl",
}


def run_name(axes: dict) -> str:
    """A file-name-safe label of a trial's axes: ``maxup.m=4,seed=0``."""
    label = ",".join(f"{k}={v}" for k, v in axes.items()) or "run"
    return "".join(c if c.isalnum() or c in "=,._-" else "_" for c in label)


class TrialViews:
    """Writes one trial's epochs to TensorBoard (and MLflow when a URI is given).

    Args:
        trial_dir: the trial's folder (event files go under ``tensorboard/``).
        trial_id: its id (the MLflow run name).
        axes: its axis values, seed included.
        config: its resolved config (TensorBoard text, MLflow params).
        mlflow_uri: MLflow tracking URI, or None.
    """

    def __init__(self, trial_dir: Path, trial_id: str, axes: dict, config: dict,
                 mlflow_uri: str | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = TrialDir(trial_dir).tensorboard / run_name(axes)
        self.writer = SummaryWriter(log_dir=str(self.dir))
        self.written: set[int] = set()
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1) + "\n```", 0)
        self.writer.add_text("axes", json.dumps(axes), 0)
        self.mlflow = None
        if mlflow_uri:
            self.mlflow = _MlflowRun(mlflow_uri, trial_id, axes, config)

    def log(self, metrics: dict) -> None:
        """Write one epoch's metrics (an epoch already written by this process is skipped)."""
        epoch = int(metrics.get("epoch", 0))
        if epoch in self.written:
            return
        self.written.add(epoch)
        values = {}
        for key, tag in SCALARS.items():
            v = metrics.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool):
                self.writer.add_scalar(tag, float(v), epoch)
                values[tag.replace("/", "_")] = float(v)
        self.writer.flush()
        if self.mlflow is not None:
            self.mlflow.log(values, epoch)

    def log_history(self, history: list[dict]) -> None:
        for row in history:
            self.log(row)

    def files(self) -> list[Path]:
        """The event files written so far (to mirror to remote storage)."""
        return sorted(p for p in self.dir.glob("events.out.tfevents.*") if p.is_file())

    def close(self, status: str | None = None) -> None:
        self.writer.close()
        if self.mlflow is not None:
            self.mlflow.close(status)


class _MlflowRun:
    def __init__(self, uri: str, trial_id: str, axes: dict, config: dict):
        import mlflow

        self.client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name("maxup")
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment("maxup")
        tags = {f"axis.{k}": str(v) for k, v in axes.items()}
        tags["trial_id"] = trial_id
        self.run_id = self.client.create_run(exp_id, run_name=trial_id, tags=tags).info.run_id
        params = _flatten(config)  # dotted keys, as the search spaces write them
        for key, value in params.items():
            self.client.log_param(self.run_id, key, str(value)[:500])

    def log(self, values: dict, epoch: int) -> None:
        for key, value in values.items():
            self.client.log_metric(self.run_id, key, value, step=epoch)

    def close(self, status: str | None) -> None:
        self.client.set_terminated(self.run_id,
                                   "FINISHED" if status in (None, "completed") else "FAILED")


def check_mlflow(uri: str | None) -> None:
    """Refuse ``--mlflow`` when the optional extra is missing (one line, before launch)."""
    if not uri:
        return
    try:
        import mlflow  # noqa: F401
    except ImportError:
        from maxup.errors import UsageError

        raise UsageError(f"--mlflow: got {uri!r}, but mlflow is not installed; allowed: "
                         "pip install 'maxup[mlflow]' first") from None
