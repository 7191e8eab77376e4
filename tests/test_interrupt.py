"""Issue 27, items 2 and 3: one Ctrl-C story (what was saved, the exact command to continue,
nothing left running) for ``maxup sweep`` and ``maxup train``, a first line before anything
slow, and a line at least every 10 s while training.

The Ctrl-C tests drive the real CLI in its own session and send SIGINT to its process group,
as a terminal does. Which moment is reached is decided from the command's own output and
files, never from a clock; the process tree is read from /proc and every process the command
started must be gone once it has exited (bounded waits, as in test_sweep.py)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from proc_helpers import alive, cmdline
from test_sweep import kill_session

from maxup import records
from maxup.platform.liveness import Heartbeat, run_describer
from maxup.platform.reaper import GRACE_S, descendants
from maxup.platform.space import load_space

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


class Driven:
    """A command started in its own session, its output collected line by line and every
    process it starts recorded (pid -> start time) until it exits."""

    def __init__(self, argv: list[str], env: dict | None = None):
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.seen: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def watch(self) -> None:
        for pid, start in descendants(self.proc.pid).items():
            if pid not in self.seen:
                self.seen[pid] = start
                self.names[pid] = cmdline(pid)

    def until(self, condition, what: str, timeout: float = 240) -> None:
        """Wait (recording processes) until ``condition()``; fail if the command ends first."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"ended before {what}:\n" + "\n".join(self.lines)
            assert time.monotonic() < deadline, f"never {what}:\n" + "\n".join(self.lines)
            self.watch()
            time.sleep(0.05)
        self.watch()

    def ctrl_c(self, timeout: float = 120) -> int:
        """SIGINT to the process group (a terminal's Ctrl-C); its exit status."""
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            self._reader.join(timeout=10)
        return rc

    def left(self) -> list[str]:
        """Processes it started still running a few seconds after it exited."""
        deadline = time.monotonic() + GRACE_S + 5
        while alive(self.seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        return [self.names.get(pid, str(pid)) for pid in alive(self.seen)]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        kill_session(self.proc.pid)
        for pid in alive(self.seen):
            os.kill(pid, signal.SIGKILL)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _env(tmp: Path) -> dict:
    ray_tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"mxi{os.getpid()}"
    ray_tmp.mkdir(exist_ok=True)
    return dict(os.environ, RAY_TMPDIR=str(ray_tmp), PYTHONUNBUFFERED="1",
                RAY_USAGE_STATS_ENABLED="0")


def _continue_command(text: str) -> list[str]:
    """The command the story says continues the work, as argv for this Python."""
    found = re.findall(r"To continue: (maxup .*)$", text, re.M)
    assert len(found) == 1, text
    argv = shlex.split(found[0])
    assert argv[0] == "maxup"
    return [PYTHON, "-m", "maxup", *argv[1:]]


def _checkpoint_epoch(trial_dir: Path) -> int:
    """The epoch a run resumes after: read from its checkpoint here, independently."""
    return int(torch.load(trial_dir / "checkpoints" / "last.pt", map_location="cpu",
                          weights_only=True)["epoch"])


def _no_library_story(text: str) -> None:
    for wrong in ("Tuner.restore", "Traceback", "Failed to fetch metrics", "Exception ignored",
                  "Gracefully aborting"):
        assert wrong not in text, text


SPACE = """\
name: cc
base:
  model: {name: small_cnn}
  data: {name: digits}
  augment: {ops: [gaussian], sigma: 0.3}
  maxup: {m: 2, warmup_epochs: 0}
  train: {epochs: 5, batch_size: 64, device: cpu, progress: false, checkpoint_every: 1}
grid:
  optim.lr: [0.05, 0.02]
seeds: 1
resources: {cpus_per_trial: 1}
concurrency: 1
"""


@pytest.mark.ray
@pytest.mark.slow
def test_regression_sweep_ctrl_c_at_three_moments(tmp_path):
    """Ctrl-C while Ray starts, while Tune starts the trials, and mid-trial. It used to print
    Tune's `Tuner.restore(...)` advice, add `Failed to fetch metrics` warnings, be swallowed
    by a fork hook during Ray's start-up (the sweep then ran to the end), and leave Ray's
    dashboard and runtime-env agents running. Now each time: exit 130, the saved state, the
    exact command to continue, and no process of the sweep left."""
    space = tmp_path / "cc.yaml"
    space.write_text(SPACE)
    storage = tmp_path / "st"
    argv = [PYTHON, "-m", "maxup", "sweep", str(space), "--storage", str(storage),
            "--no-table", "--train.epochs=40"]
    trials = load_space(space)
    trials.base["train"]["epochs"] = 40
    ids = {t.trial_id for t in trials.expand()}

    def ray_started(run: Driven) -> bool:
        return any("raylet" in n for n in run.names.values())

    def record_with_epochs(n: int):
        def have() -> bool:
            for tid in ids:
                rec = records.load_record(storage / "trials" / tid / "record.json")
                if rec is not None and len(rec.history) >= n:
                    return True
            return False
        return have

    moments = {
        "while Ray starts": lambda run: ray_started(run),
        "while the trials start": lambda run: "trial(s) to run" in run.text,
        "mid-trial": lambda run: record_with_epochs(2)(),
    }
    for moment, reached in moments.items():
        run = Driven(argv, _env(tmp_path))
        try:
            run.until(lambda run=run, reached=reached: reached(run), moment)
            rc = run.ctrl_c()
            left = run.left()
        finally:
            run.close()
        assert rc == 130, (moment, run.text)
        assert not left, f"{moment}: left running after the sweep exited: {left}"
        _no_library_story(run.text)
        assert "maxup: interrupted; sweep cc:" in run.text, run.text
        assert "Nothing of this sweep is left running." in run.text
        command = _continue_command(run.text)
        assert command[4:] == [str(space), "--storage", str(storage), "--train.epochs=40"]

    # Mid-trial: the story names the stopped trial and the epoch it resumes after, which is
    # its checkpoint's; the printed command continues it from there.
    stopped = [tid for tid in ids if records.load_record(
        storage / "trials" / tid / "record.json") is not None]
    assert stopped
    for tid in stopped:
        rec = records.load_record(storage / "trials" / tid / "record.json")
        after = _checkpoint_epoch(storage / "trials" / tid)
        assert rec.status is records.Status.RUNNING
        assert (f"{tid} (optim.lr=" in run.text and
                f"{len(rec.history)} of 40 epochs recorded; resumes after epoch {after} "
                "(its checkpoint)" in run.text), run.text
    again = subprocess.run(command, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                           timeout=600, start_new_session=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for tid in stopped:
        log = (storage / "trials" / tid / "log.txt").read_text()
        assert re.search(r"^resumed from .*last\.pt after epoch \d+$", log, re.M), log


TRAIN_CONFIG = """\
seed: 0
model: {name: small_cnn}
data: {name: digits}
augment: {ops: [gaussian], sigma: 0.25}
maxup: {m: 2, warmup_epochs: 0}
optim: {lr: 0.05}
train: {epochs: 5, batch_size: 64, device: cpu, progress: false, checkpoint_every: 1}
"""


def test_regression_train_ctrl_c_keeps_a_resumable_record_and_prints_the_resume_command(
        tmp_path):
    """`maxup train` Ctrl-C printed `maxup: interrupted` alone. Now: what was saved (the
    epochs recorded and the checkpoint's epoch) and the exact `--resume` command, which
    continues the run from that epoch."""
    config = tmp_path / "c.yaml"
    config.write_text(TRAIN_CONFIG)
    out = tmp_path / "run"
    run = Driven([PYTHON, "-m", "maxup", "train", str(config), "--out", str(out),
                  "--train.epochs=200"])
    try:
        run.until(lambda: (out / "checkpoints" / "last.pt").exists()
                  and len(re.findall(r"^epoch ", run.text, re.M)) >= 1, "an epoch")
        rc = run.ctrl_c()
        left = run.left()
    finally:
        run.close()
    assert rc == 130 and not left, (rc, left, run.text)
    _no_library_story(run.text)
    rec = records.load_record(out / "record.json")
    after = _checkpoint_epoch(out)
    assert rec is not None and rec.status is records.Status.RUNNING and after >= 1
    assert (f"{len(rec.history)} of 200 epochs recorded; resumes after epoch {after} (its "
            "checkpoint)") in run.text
    command = _continue_command(run.text)
    assert command[4:] == [str(config), "--out", str(out), "--resume", "--train.epochs=200"]
    # The same command with fewer epochs would be another run; continue this one for one
    # more epoch to see it resume where the story said (the run's epochs are part of it).
    resumed = Driven(command)
    try:
        resumed.until(lambda: "resumed from" in resumed.text, "resumed")
        resumed.ctrl_c()
    finally:
        resumed.close()
    assert re.search(rf"^resumed from .*last\.pt after epoch {after}$", resumed.text,
                     re.M), resumed.text


@pytest.mark.ray
@pytest.mark.slow
def test_regression_train_workers_2_ctrl_c_is_not_a_silent_exit_1(tmp_path):
    """With `--workers 2`, Ray Train took over SIGINT ("graceful abort") and the command
    exited 1 without a word. Now the same story as one process, and no process left."""
    config = tmp_path / "c.yaml"
    config.write_text(TRAIN_CONFIG)
    out = tmp_path / "run"
    run = Driven([PYTHON, "-m", "maxup", "train", str(config), "--out", str(out), "--workers",
                  "2", "--train.epochs=400"], _env(tmp_path))
    try:
        run.until(lambda: len(re.findall(r"^epoch ", run.text, re.M)) >= 2, "two epochs")
        rc = run.ctrl_c()
        left = run.left()
    finally:
        run.close()
    assert rc == 130, run.text
    assert not left, f"left running: {left}"
    _no_library_story(run.text)
    assert "maxup: interrupted; run" in run.text and "Ray Train committed" in run.text
    assert _continue_command(run.text)[4:] == [str(config), "--out", str(out), "--resume",
                                               "--workers", "2", "--train.epochs=400"]


# ------------------------------------------------------------------ first line, heartbeat

_NO_TORCH = textwrap.dedent("""\
    import sys
    sys.modules["torch"] = None  # importing torch now fails: what comes before never needs it
    from maxup.cli import main
    sys.exit(main(sys.argv[1:]))
    """)


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_first_line_comes_before_torch_is_imported(tmp_path, command):
    """The first line used to come after torch, the data and Ray had loaded (39 s for
    `maxup train --workers 2`, 7-18 s for a sweep). It now comes before anything that needs
    torch: here torch cannot be imported at all, and the line is still printed."""
    if command == "train":
        config = tmp_path / "c.yaml"
        config.write_text(TRAIN_CONFIG)
        args = ["train", str(config), "--out", str(tmp_path / "run")]
        first = f"train {config} -> {tmp_path / 'run'}: 5 epochs of small_cnn on digits"
    else:
        space = tmp_path / "cc.yaml"
        space.write_text(SPACE)
        args = ["sweep", str(space), "--storage", str(tmp_path / "st")]
        first = f"sweep cc: 2 trials (2 arms × 1 seeds), storage {tmp_path / 'st'}/cc"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([PYTHON, "-c", _NO_TORCH, *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0  # it needed torch after the line
    assert res.stdout.splitlines()[0].startswith(first), res.stdout + res.stderr


def test_heartbeat_prints_after_a_silence_and_not_while_lines_come():
    lines: list[str] = []
    beat = Heartbeat(lambda silent: f"... {silent:.1f} s", lines.append, every=10.0)
    beat._last = 0.0
    assert beat.beat(5.0) and lines == []      # 5 s of silence: nothing
    assert beat.beat(9.0) and lines == ["... 9.0 s"]  # due a second early (two ticks)
    assert beat.beat(12.0) and lines == ["... 9.0 s"]  # the heartbeat line counts as a line
    assert beat.beat(18.0) and lines[-1] == "... 9.0 s" and len(lines) == 2
    beat._last = 20.0  # the command printed
    assert beat.beat(28.9) and len(lines) == 2
    # Counted from the command's first line when that came before the heartbeat started.
    late = Heartbeat(lambda silent: "late", lines.append, every=10.0, last_line_at=100.0)
    assert late.last_line_at == 100.0 and late.beat(109.0) and lines[-1] == "late"


def test_run_describer_names_the_epoch_in_progress(tmp_path):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(TRAIN_CONFIG)
    from maxup.config import load_config, to_dict

    config = to_dict(load_config(cfg_path, {}))
    path = tmp_path / "record.json"
    describe = run_describer(path, 5)
    assert describe(9.0).startswith("... set-up or epoch 1/5 in progress for ")
    rec = records.build_record(config=config, history=[{"epoch": 1, "wall_s": 3.0},
                                                       {"epoch": 2, "wall_s": 4.0}],
                               status="running", timings={}, env={})
    records.write_record(path, rec)
    line = describe(9.0)
    assert line.startswith("... epoch 3/5 in progress for ")
    assert line.endswith("; the previous epoch took 4 s")


def test_regression_a_finished_runs_position_is_not_named_by_the_next_runs_heartbeat(
        tmp_path, monkeypatch):
    """CI: a test that trained earlier in the same process left its last epoch's position
    ('batch 0 of 1') behind, and the next run's heartbeat named it as its own epoch 1. A run
    that ends, normally or by an exception mid-epoch, now leaves no position."""
    from maxup.config import load_config, to_dict
    from maxup.engine import progress
    from maxup.engine.loop import train

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(TRAIN_CONFIG)
    config = to_dict(load_config(cfg_path, {"train.epochs": 1, "data.subset": 64}))
    seen = []

    def stop_mid_epoch(epoch_metrics, ckpt):  # reported after the epoch's steps
        seen.append(progress.position())
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        train(config, tmp_path / "a", reporter=stop_mid_epoch, log=None)
    assert seen == [None]  # the epoch's steps are over once it reports
    assert progress.position() is None
    def fail_before_close(self):  # an exception after the epoch's last step: no close()
        seen.append(progress.position())
        raise RuntimeError("mid-epoch")

    monkeypatch.setattr(progress.Progress, "close", fail_before_close)
    with pytest.raises(RuntimeError, match="mid-epoch"):
        train(config, tmp_path / "b", log=None)
    assert (seen[-1].epoch, seen[-1].total, seen[-1].unit) == (1, 1, "batch")  # 64 images
    assert progress.position() is None
    describe = run_describer(tmp_path / "c" / "record.json", 5)
    assert describe(9.0).startswith("... set-up or epoch 1/5 in progress for ")


def test_sweep_heartbeat_names_running_trials_epochs():
    from types import SimpleNamespace

    from maxup.platform.progress import SweepProgress

    now = [0.0]
    prog = SweepProgress(SimpleNamespace(record=lambda tid: Path("/nonexistent") / tid),
                         [].append, {"a": 10.0, "b": 10.0}, slots=1, tty=False,
                         clock=lambda: now[0], epochs={"a": 8, "b": 8})
    trial = SimpleNamespace(config={"trial": {"id": "a", "maxup.m": 1}})
    prog.on_trial_start(0, [], trial)
    prog.on_trial_result(0, [], trial, {"epoch": 3})
    now[0] = 12.0
    assert prog.heartbeat() == ("[status] 0 done, 1 running, 0 failed, 1 pending; elapsed "
                                "12 s, ETA 10 s; running: a epoch 3/8")
