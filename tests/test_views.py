"""TensorBoard event files per sweep trial (read back with tensorboard's own reader), and the
``--mlflow`` refusal when the optional extra is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from maxup.platform.views import TrialViews, run_name  # noqa: E402


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_views_write_one_scalar_per_metric_and_epoch(tmp_path):
    axes = {"maxup.m": 4, "seed": 1}
    views = TrialViews(tmp_path, "abc", axes, {"seed": 1})
    views.log({"epoch": 1, "test_acc": 50.0, "train_loss": 2.0, "maxup_active": True})
    views.log({"epoch": 2, "test_acc": 75.0, "train_loss": 1.0})
    views.log({"epoch": 2, "test_acc": 99.0})  # an epoch already written: skipped
    views.close("completed")
    assert run_name(axes) == "maxup.m=4,seed=1"
    run_dir = tmp_path / "tensorboard" / "maxup.m=4,seed=1"
    scalars = _scalars(run_dir)
    assert scalars["test/acc"] == [(1, 50.0), (2, 75.0)]
    assert scalars["train/loss"] == [(1, 2.0), (2, 1.0)]
    assert "maxup/active" not in scalars  # booleans are not curves
    assert views.files() and all(p.parent == run_dir for p in views.files())


def test_a_sweep_trial_writes_its_curves_beside_its_record(tmp_path):
    from maxup import records
    from maxup.platform.space import load_space
    from maxup.platform.sweep import run_trial

    space = tmp_path / "v.yaml"
    space.write_text("name: v\nbase:\n  model: {name: small_cnn}\n  data: {name: digits, "
                     "subset: 200}\n  train: {epochs: 2, batch_size: 50, device: cpu, "
                     "progress: false}\n  maxup: {m: 2, warmup_epochs: 0}\nseeds: 1\n")
    trial = load_space(space).expand()[0]
    payload = {"trial_id": trial.trial_id, "config": trial.config, "axes": trial.axes,
               "seed": trial.seed}
    run_trial(payload, str(tmp_path / "store" / "v"), {"name": "v", "paper_table": None})
    trial_dir = tmp_path / "store" / "trials" / trial.trial_id
    rec = records.load_record(trial_dir / "record.json")
    assert rec.completed and rec.environment["device_name"]
    scalars = _scalars(trial_dir / "tensorboard" / "seed=0")
    assert scalars["test/acc"] == [(h["epoch"], pytest.approx(h["test_acc"]))
                                   for h in rec.history]


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None,
                    reason="mlflow is installed: nothing to refuse")
def test_mlflow_without_the_extra_is_refused_in_one_line(tmp_path, capsys):
    from maxup.cli import main

    space = tmp_path / "m.yaml"
    space.write_text("name: m\nbase:\n  model: {name: small_cnn}\n  data: {name: digits}\n"
                     "  train: {epochs: 1, device: cpu}\nseeds: 1\n")
    rc = main(["sweep", str(space), "--mlflow", f"file:{tmp_path / 'mlruns'}", "--storage",
               str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--mlflow" in err and "maxup[mlflow]" in err and "\n" not in err
    assert not (tmp_path / "s").exists()


@pytest.mark.ray
def test_regression_tensorboard_shows_each_trial_once_named_by_id_and_arm(tmp_path):
    """`tensorboard --logdir STORAGE` showed 32 runs for 15 trials: Tune wrote its own event
    file per trial (`tune/…/_tune_trial_…/events.out.tfevents.*`) beside the trial's. Now
    every event file under the storage is a trial's own, one run per trial, named by the
    trial id and its arm's axes (`trials/<id>/tensorboard/<axes>`)."""
    from sweep_helpers import run_sweep_cli

    from maxup.platform.space import load_space

    space = tmp_path / "tb.yaml"
    space.write_text("name: tb\nbase:\n  model: {name: mlp}\n  data: {name: digits}\n"
                     "  train: {epochs: 1, device: cpu, progress: false}\n"
                     "grid:\n  maxup.m: [1, 2]\nseeds: 1\nconcurrency: 2\n")
    storage = tmp_path / "st"
    res = run_sweep_cli(space, storage)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # Tune no longer reads back result files it does not write (it warned for every trial)
    assert "Failed to fetch metrics" not in res.stdout + res.stderr
    runs = sorted({p.parent.relative_to(storage).as_posix()
                   for p in storage.rglob("events.out.tfevents.*")})
    want = sorted(f"trials/{t.trial_id}/tensorboard/maxup.m={t.axes['maxup.m']},seed=0"
                  for t in load_space(space).expand())
    assert runs == want
