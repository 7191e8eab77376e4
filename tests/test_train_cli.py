"""``maxup train``: help, bad input (exit 2, one line naming the field, nothing written), runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maxup.cli import main

REPO = Path(__file__).resolve().parent.parent
SMOKE = str(REPO / "configs" / "digits_smoke.yaml")
CIFAR = str(REPO / "configs" / "cifar10_resnet110_maxup_cutout.yaml")


def _maxup(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "maxup", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)


def test_train_help_shows_an_example():
    proc = _maxup("train", "--help")
    assert proc.returncode == 0
    assert "example:" in proc.stdout
    assert "maxup train configs/" in proc.stdout
    assert "--resume" in proc.stdout and "--out" in proc.stdout


def test_bad_config_in_a_real_process_exits_2_with_one_line(tmp_path):
    out = tmp_path / "run"
    proc = _maxup("train", SMOKE, "--maxup.m=0", "--out", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("maxup: error: maxup.m: got 0")
    assert not out.exists()


@pytest.mark.parametrize(
    ("config", "args", "field"),
    [
        (SMOKE, ["--maxup.m=0"], "maxup.m"),
        (SMOKE, ["--maxup.mm=4"], "maxup.mm"),
        (SMOKE, ["--nonsense=1"], "nonsense"),
        (SMOKE, ["--optim.lr=fast"], "optim.lr"),
        (SMOKE, ["--model.name=resnet9000"], "model.name"),
        (SMOKE, ["--data.name=mnist"], "data.name"),
        (SMOKE, ["--optim.milestones=[5]"], "optim.milestones"),
        (CIFAR, [], "data.root"),  # cifar10 with data.root unset
        (CIFAR, ["--data.root=/nonexistent/cifar"], "data.root"),
        (str(REPO / "configs" / "no_such.yaml"), [], "no_such.yaml"),
    ],
)
def test_bad_input_exits_2_names_the_field_writes_nothing(tmp_path, capsys, config, args,
                                                          field):
    out = tmp_path / "run"
    rc = main(["train", config, "--out", str(out), "--train.device=cpu", *args])
    captured = capsys.readouterr()
    assert rc == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("maxup: error: ")
    assert field in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_existing_run_needs_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", SMOKE, "--out", str(out), "--train.epochs=1",
                 "--train.progress=false"]) == 0
    before = (out / "record.json").read_bytes()
    capsys.readouterr()
    rc = main(["train", SMOKE, "--out", str(out), "--train.epochs=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--out" in err and "--resume" in err
    assert (out / "record.json").read_bytes() == before


def test_train_writes_the_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", SMOKE, "--out", str(out), "--train.epochs=2", "--maxup.m=3",
               "--train.progress=false"])
    assert rc == 0
    assert "done: test acc" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.csv", "metrics.jsonl",
                                               "record.json", "checkpoints"}
    record = json.loads((out / "record.json").read_text())
    assert record["config"]["maxup"]["m"] == 3  # the override reached the run
    assert record["status"] == "completed" and len(record["history"]) == 2
    # --resume on a finished run trains nothing more and keeps each epoch once
    assert main(["train", SMOKE, "--out", str(out), "--train.epochs=2", "--maxup.m=3",
                 "--train.progress=false", "--resume"]) == 0
    again = json.loads((out / "record.json").read_text())
    assert [h["epoch"] for h in again["history"]] == [1, 2]


def test_regression_distributed_run_given_up_by_ray_train_is_recorded_failed(
        tmp_path, capsys, monkeypatch):
    import maxup.platform.distributed as distributed

    def gives_up(*args, **kwargs):
        raise RuntimeError("worker group failed 4 times")

    monkeypatch.setattr(distributed, "train_distributed", gives_up)
    out = tmp_path / "run"
    code = main(["train", str(REPO / "configs" / "digits_smoke.yaml"), "--workers", "2",
                 "--out", str(out)])
    assert code == 1
    rec = json.loads((out / "record.json").read_text())
    assert rec["status"] == "failed"
    assert rec["failure"]["reason"] == "RuntimeError: worker group failed 4 times"
    assert rec["config"]["train"]["workers"] == 2
    assert "run failed" in capsys.readouterr().out
