"""`maxup sweep` end to end: records, resume after SIGKILL, failures, retries, the trial lock.

Ray tests drive the real CLI in a subprocess (``python -m maxup sweep FILE --storage DIR``) so
the embedded Ray is the sweep's own. Each subprocess gets its own short Ray temp dir
(``RAY_TMPDIR``) and its own session (``start_new_session``): whatever Ray leaves behind is
found by that session id and killed by pid. Never ``ray stop``.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from proc_helpers import alive
from sweep_helpers import sweep_record_files, trial_dir

from maxup import records
from maxup.platform.reaper import descendants
from maxup.platform.space import load_space
from maxup.platform.sweep import SweepLayout, SweepSummary, plan

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
EPOCH_LINE = re.compile(r"^epoch\s+(\d+)/(\d+)", re.M)


# --------------------------------------------------------------------------- helpers

def write_space(path: Path, name: str, *, grid: str, epochs: int = 3, model: str = "mlp",
                m: int = 1, seeds: int = 2, retries: int = 1, concurrency: int = 2) -> Path:
    """A tiny search space on digits (bundled, no files), 1 CPU per trial."""
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        base:
          model: {{name: {model}}}
          data: {{name: digits}}
          augment: {{ops: [gaussian], sigma: 0.3}}
          maxup: {{m: {m}, warmup_epochs: 0}}
          optim: {{lr: 0.05}}
          train: {{epochs: {epochs}, batch_size: 64, device: cpu, progress: false,
                   checkpoint_every: 1}}
        seeds: {seeds}
        resources: {{cpus_per_trial: 1}}
        concurrency: {concurrency}
        retries: {retries}
        grid:
        """) + textwrap.indent(textwrap.dedent(grid), "  "))
    return path


@pytest.fixture
def ray_tmp():
    """A short private Ray temp dir (Unix socket paths must stay under 107 bytes)."""
    d = tempfile.mkdtemp(prefix="mxs", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _env(ray_tmp: str) -> dict:
    return dict(os.environ, RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1",
                RAY_USAGE_STATS_ENABLED="0")


def sweep_cmd(space: Path, storage: Path, *extra: str) -> list[str]:
    return [PYTHON, "-m", "maxup", "sweep", str(space), "--storage", str(storage), *extra]


def run_cli(space: Path, storage: Path, ray_tmp: str, *extra: str, no_table: bool = True,
            timeout: float = 200) -> subprocess.CompletedProcess:
    """Run ``maxup sweep`` to the end in its own session; kill its leftovers afterwards."""
    args = sweep_cmd(space, storage, *extra, *(["--no-table"] if no_table else []))
    p = subprocess.Popen(args, cwd=ROOT, env=_env(ray_tmp), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        kill_session(p.pid)
    return subprocess.CompletedProcess(args, p.returncode, out, "")


def session_processes(sid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes in session ``sid`` (zombies left out)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            # A process past its memory teardown (exiting) has an empty command line; its name
            # still says what it was.
            cmd = cmd or f"[{(entry / 'comm').read_text().strip()}]"
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # state, ppid, pgrp, session, ...
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append((int(entry.name), cmd))
    return out


def kill_session(sid: int, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, each process of session ``sid`` (started by this test only)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        procs = session_processes(sid)
        for pid, _ in procs:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while procs and time.time() < deadline and session_processes(sid):
            time.sleep(0.2)


def storage_state(storage: Path) -> dict[str, tuple[int, int]]:
    """(mtime, size) of every file under ``storage``."""
    out = {}
    for f in storage.rglob("*"):
        try:
            if f.is_file():
                st = f.stat()
                out[str(f.relative_to(storage))] = (st.st_mtime_ns, st.st_size)
        except OSError:
            pass
    return out


def read_records(storage: Path, name: str) -> dict[str, dict]:
    out = {}
    for tid, f in sorted(sweep_record_files(storage, name).items()):
        try:
            out[tid] = json.loads(f.read_text())
        except ValueError:  # never expected: records are written atomically
            out[tid] = {"_unreadable": f.read_text()}
    return out


def log_epochs(storage: Path, name: str, tid: str) -> list[int]:
    f = trial_dir(storage, tid) / "log.txt"
    return [int(m.group(1)) for m in EPOCH_LINE.finditer(f.read_text())] if f.exists() else []


def _checkpoint_epoch(storage: Path, tid: str) -> int | None:
    """The number of finished epochs in a trial's ``checkpoints/last.pt`` (None: none yet)."""
    from maxup.checkpoint import load_checkpoint
    from maxup.store import Storage

    f = Storage(storage).trial_dir(tid).checkpoint
    return load_checkpoint(f, require=("epoch",))["epoch"] if f.exists() else None


def check_record(rec: dict, trial, sweep: str, epochs: int, status: str = "completed") -> None:
    """A record per docs/records.md for ``trial`` of ``sweep``."""
    keys = {"schema", "sweep", "trial_id", "status", "config", "seed", "axes", "paper_table",
            "final", "best", "history", "timings", "environment", "failure", "certification",
            "created", "updated"}
    assert keys <= set(rec), keys - set(rec)
    assert rec["schema"] == records.SCHEMA
    assert rec["status"] == status
    assert rec["sweep"] == sweep
    assert rec["trial_id"] == trial.trial_id == records.trial_id(rec["config"])
    assert rec["config"] == trial.config
    assert rec["seed"] == trial.seed == rec["config"]["seed"]
    assert rec["axes"] == json.loads(json.dumps(trial.axes))
    if status == "completed":
        assert [h["epoch"] for h in rec["history"]] == list(range(1, epochs + 1))
        assert rec["failure"] is None
        assert rec["final"]["epoch"] == epochs
        assert 1 <= rec["best"]["epoch"] <= epochs
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "wall_s"):
            assert isinstance(rec["final"][key], float), key
        assert rec["timings"]["wall_s"] > 0
    for stamp in ("created", "updated"):
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$", rec[stamp])


def no_epoch_twice(rec: dict) -> None:
    epochs = [h["epoch"] for h in rec["history"]]
    assert epochs == sorted(set(epochs)) and epochs == list(range(1, len(epochs) + 1)), epochs


# --------------------------------------------------------------------------- no Ray

def _fake_record(path: Path, status: str, config: dict) -> None:
    records.write_record(path, records.build_record(config=config, history=[], status=status,
                                                    timings={}, env={}))


def test_plan_skips_completed_and_failed_unless_rerun(tmp_path):
    spec = load_space(write_space(tmp_path / "s.yaml", "p", grid="maxup.m: [1, 2]"))
    trials = spec.expand()
    layout = SweepLayout(tmp_path / "st" / "p")
    for t, status in zip(trials[:3], ("completed", "failed", "running"), strict=True):
        _fake_record(layout.record(t.trial_id), status, t.config)
    layout.record(trials[3].trial_id).parent.mkdir(parents=True)
    layout.record(trials[3].trial_id).write_text("{half a rec")  # unreadable
    pending, skipped = plan(spec, trials, layout, rerun_failed=False)
    assert [t.trial_id for t in skipped] == [t.trial_id for t in trials[:2]]
    assert [t.trial_id for t in pending] == [t.trial_id for t in trials[2:]]
    pending, skipped = plan(spec, trials, layout, rerun_failed=True)
    assert [t.trial_id for t in skipped] == [trials[0].trial_id]


def test_summary_line():
    s = SweepSummary(completed=["a", "b"], failed=["c"], skipped=["d"])
    assert s.line() == "completed 2, failed 1, interrupted 0, skipped (already done) 1"
    assert not s.ok


def test_regression_skipped_failed_trials_are_reported_and_not_ok():
    s = SweepSummary(skipped=["a", "b"], failed_before=["b"])
    assert s.line().endswith("skipped (already done) 2, of which 1 failed before "
                             "(run again with --rerun-failed)")
    assert not s.ok
    assert SweepSummary(skipped=["a"]).ok


_LOCK_CHILD = """
import json, sys
from maxup.platform.space import load_space
from maxup.platform.sweep import SweepLayout, _trial_payload, run_trial
spec = load_space(sys.argv[1])
t = spec.expand()[0]
rec = run_trial(_trial_payload(t), sys.argv[2], {"name": spec.name, "paper_table": None},
                log_to=None)
print("STATUS", rec["status"], flush=True)
"""


def test_trial_lock_keeps_a_second_process_out(tmp_path):
    """While one process holds a trial's lock, another one waits and trains nothing."""
    spec_path = write_space(tmp_path / "s.yaml", "lock", grid="maxup.m: [1]", epochs=2,
                            seeds=1)
    spec = load_space(spec_path)
    tid = spec.expand()[0].trial_id
    layout = SweepLayout(tmp_path / "st" / "lock")
    layout.trial_dir(tid).mkdir(parents=True)
    with open(layout.trial_dir(tid) / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        child = subprocess.Popen([PYTHON, "-c", _LOCK_CHILD, str(spec_path), str(layout.root)],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
        time.sleep(6)  # ample for imports + 2 tiny epochs had the lock not held it back
        assert child.poll() is None
        assert not layout.record(tid).exists()
        assert log_epochs(layout.root.parent, "lock", tid) == []
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0, out
    assert "STATUS completed" in out
    assert log_epochs(layout.root.parent, "lock", tid) == [1, 2]


# --------------------------------------------------------------------------- end to end

@pytest.mark.ray
@pytest.mark.slow
def test_sweep_end_to_end_one_record_per_trial(tmp_path, ray_tmp):
    space = write_space(tmp_path / "e2e.yaml", "e2e", grid="maxup.m: [1, 2]", epochs=3)
    storage = tmp_path / "st"
    trials = load_space(space).expand()
    assert len(trials) == 4
    res = run_cli(space, storage, ray_tmp)
    assert res.returncode == 0, res.stdout[-3000:]
    out = res.stdout
    assert "sweep e2e: 4 trial(s) to run, 2 at a time" in out
    for t in trials:
        assert len(re.findall(rf"^\[done\]\s+{t.trial_id} \(.*test acc", out, re.M)) == 1, out
    assert re.search(r"^sweep finished in \d+s: completed 4, failed 0, interrupted 0, "
                     r"skipped \(already done\) 0$", out, re.M), out
    assert f"table: maxup tables {storage / 'e2e'}" in out

    recs = read_records(storage, "e2e")
    assert sorted(recs) == sorted(t.trial_id for t in trials)
    for t in trials:
        check_record(recs[t.trial_id], t, "e2e", epochs=3)
        assert log_epochs(storage, "e2e", t.trial_id) == [1, 2, 3]
        assert (trial_dir(storage, t.trial_id) / "checkpoints" / "last.pt").is_file()
    sweep_json = json.loads((storage / "e2e" / "sweep.json").read_text())
    assert [s["trial_id"] for s in sweep_json["trials"]] == [t.trial_id for t in trials]

    # Again: everything is skipped, no Ray starts, nothing is rewritten; the table prints.
    stamps = {k: (r["created"], r["updated"]) for k, r in recs.items()}
    again = run_cli(space, storage, ray_tmp, no_table=False, timeout=120)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "trial(s) to run" not in again.stdout
    assert "completed 0, failed 0, interrupted 0, skipped (already done) 4" in again.stdout
    assert f"table: maxup tables {storage / 'e2e'}" in again.stdout
    assert {k: (r["created"], r["updated"]) for k, r in
            read_records(storage, "e2e").items()} == stamps


# --------------------------------------------------------------------------- resume

@pytest.mark.ray
@pytest.mark.slow
def test_resume_after_driver_sigkill(tmp_path, ray_tmp):
    """Also the regression for processes outliving a SIGKILLed driver (issue 13): Ray's
    dashboard and runtime-env agents stayed for good, and trial workers trained on for up to
    ~3 s, writing records, logs and checkpoints. Now every process the driver had started is
    gone within 3 s of the kill and no file under the storage changes after it."""
    # Two trials one at a time: the kill lands while the second is early in its run and the
    # first is complete (8 epochs, ~4 s idle, of margin before the second could finish).
    epochs, margin = 12, 8
    space = write_space(tmp_path / "res.yaml", "res", grid="optim.lr: [0.05, 0.02]",
                        epochs=epochs, model="small_cnn", m=4, seeds=1, concurrency=1)
    storage = tmp_path / "st"
    trials = {t.trial_id: t for t in load_space(space).expand()}
    driver = subprocess.Popen(sweep_cmd(space, storage, "--no-table"), cwd=ROOT,
                              env=_env(ray_tmp), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    sid = driver.pid
    try:
        deadline = time.time() + 150
        while True:
            assert driver.poll() is None, "the sweep ended before it could be interrupted"
            assert time.time() < deadline, "no trial completed while another was mid-run"
            recs = read_records(storage, "res")
            done = [k for k, r in recs.items() if r.get("status") == "completed"]
            mid = [k for k, r in recs.items() if r.get("status") == "running"
                   and 1 <= len(r["history"]) <= epochs - margin]
            if done and mid:
                break
            time.sleep(0.1)
        # Everything the driver started (its watchdog, Ray's processes, the trial workers),
        # seen by the watchdog too: it refreshes its view every 0.2 s.
        started = descendants(driver.pid)
        names = {pid: cmd for pid, cmd in session_processes(sid)}
        time.sleep(0.5)
        driver.kill()
        driver.wait()
        killed_at = time.time()
        time.sleep(0.5)
        files = storage_state(storage)
        while alive(started) and time.time() < killed_at + 3:
            time.sleep(0.05)
        left = [names.get(pid, pid) for pid in alive(started)]
        assert not left, f"outlived the driver's SIGKILL by 3 s: {left}"
    finally:
        kill_session(sid)

    # The snapshot taken at the kill is what the rerun starts from: nothing wrote after it.
    at_kill = read_records(storage, "res")
    saved_at_kill = {k: _checkpoint_epoch(storage, k) for k in trials}
    logs_at_kill = {k: log_epochs(storage, "res", k) for k in trials}
    time.sleep(1.5)
    assert storage_state(storage) == files
    completed = {k for k, r in at_kill.items() if r["status"] == "completed"}
    interrupted = {k for k, r in at_kill.items() if r["status"] == "running" and r["history"]}
    assert completed and interrupted

    res = run_cli(space, storage, ray_tmp)
    assert res.returncode == 0, res.stdout[-3000:]
    assert f"skipped (already done) {len(completed)}" in res.stdout
    assert f"completed {len(trials) - len(completed)}, failed 0, interrupted 0" in res.stdout

    recs = read_records(storage, "res")
    assert sorted(recs) == sorted(trials)  # exactly one record per trial
    for tid, rec in recs.items():
        check_record(rec, trials[tid], "res", epochs=epochs)
        no_epoch_twice(rec)
    for tid in completed:  # not rerun
        assert (recs[tid]["created"], recs[tid]["updated"]) == (at_kill[tid]["created"],
                                                                at_kill[tid]["updated"])
        assert log_epochs(storage, "res", tid) == logs_at_kill[tid]
        assert "resumed" not in (trial_dir(storage, tid) / "log.txt").read_text()
    for tid in interrupted:  # resumed from its checkpoint, not from scratch
        last = at_kill[tid]["history"][-1]["epoch"]
        # The checkpoint is written before the record: a kill between the two leaves the
        # checkpoint one epoch ahead of the record, and the run resumes from the checkpoint.
        saved = saved_at_kill[tid]
        assert saved in (last, last + 1), (saved, last)
        log = (trial_dir(storage, tid) / "log.txt").read_text()
        resumed = re.findall(r"^resumed from .*last\.pt after epoch (\d+)$", log, re.M)
        assert [int(e) for e in resumed] == [saved], log
        after_resume = log[log.index("resumed from"):]
        assert [int(m.group(1)) for m in EPOCH_LINE.finditer(after_resume)] == list(
            range(saved + 1, epochs + 1)), log
        assert recs[tid]["created"] == at_kill[tid]["created"]


# --------------------------------------------------------------------------- failures

@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory):
    """One sweep, three trials: ok, NaN loss (lr 100), raises (a data subset larger than
    the dataset: the preflight checks that the data is there, not this).

    Run three times: first; again (failed ones skipped); again with --rerun-failed.
    """
    tmp = tmp_path_factory.mktemp("fail")
    space = write_space(tmp / "fail.yaml", "fail", epochs=2, seeds=1, retries=2, grid="""\
        case:
          ok: {augment.sigma: 0.3}
          nan: {optim.lr: 100.0}
          boom: {data.subset: 100000}
        """)
    storage = tmp / "st"
    ray_tmp = tempfile.mkdtemp(prefix="mxs", dir="/tmp")
    try:
        runs = {"first": run_cli(space, storage, ray_tmp, "--verbose")}  # + Tune's table
        runs["first_records"] = read_records(storage, "fail")
        runs["again"] = run_cli(space, storage, ray_tmp, timeout=120)
        runs["again_records"] = read_records(storage, "fail")
        runs["rerun"] = run_cli(space, storage, ray_tmp, "--rerun-failed")
        runs["rerun_records"] = read_records(storage, "fail")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    by_case = {t.axes["case"]: t for t in load_space(space).expand()}
    return runs, by_case, storage


@pytest.mark.ray
@pytest.mark.slow
def test_nonfinite_loss_fails_its_trial_only(failing_sweep):
    runs, case, storage = failing_sweep
    first, recs = runs["first"], runs["first_records"]
    assert first.returncode == 1, first.stdout[-3000:]
    assert re.search(r"^sweep finished in \d+s: completed 1, failed 2, interrupted 0, "
                     r"skipped \(already done\) 0$", first.stdout, re.M), first.stdout[-3000:]
    check_record(recs[case["ok"].trial_id], case["ok"], "fail", epochs=2)
    nan = recs[case["nan"].trial_id]
    check_record(nan, case["nan"], "fail", epochs=2, status="failed")
    assert nan["failure"]["reason"] == "non-finite loss"
    assert nan["failure"]["epoch"] == 1 and nan["failure"]["value"] in ("nan", "inf", "-inf")
    assert f"FAILED {case['nan'].trial_id}: non-finite loss" in first.stdout
    assert re.search(rf"^\[failed\] {case['nan'].trial_id} .*non-finite loss", first.stdout,
                     re.M), first.stdout[-3000:]
    assert "table: maxup tables" in first.stdout


@pytest.mark.ray
@pytest.mark.slow
def test_raising_trial_is_retried_then_failed_with_the_exception(failing_sweep):
    runs, case, storage = failing_sweep
    first, recs = runs["first"], runs["first_records"]
    boom = recs[case["boom"].trial_id]
    check_record(boom, case["boom"], "fail", epochs=2, status="failed")
    assert boom["failure"]["reason"].startswith("ConfigError: data.subset:"), boom["failure"]
    assert "100000" in boom["failure"]["reason"]
    assert "Traceback" in boom["failure"]["detail"]
    assert "TypeError" not in first.stdout  # Ray could not copy the ConfigError (regression)
    assert boom["history"] == []
    assert re.search(rf"^\[failed\]\s+{case['boom'].trial_id} .*ConfigError: data.subset.*"
                     r"gave up after the configured retries", first.stdout, re.M)
    # retries: 2 → three attempts, counted in Tune's table of errored trials (by Tune's name).
    tune_name = re.findall(rf"^\| (\S+) +\| ERROR +\| .*\| {case['boom'].trial_id} \|",
                           first.stdout, re.M)
    assert tune_name, first.stdout[-4000:]
    attempts = re.findall(rf"^\| {tune_name[-1]} +\| +(\d+) \| .*error\.txt", first.stdout,
                          re.M)
    assert attempts and int(attempts[-1]) == 3, first.stdout[-4000:]


@pytest.mark.ray
@pytest.mark.slow
def test_failed_trials_skipped_unless_rerun_failed(failing_sweep):
    runs, case, storage = failing_sweep
    again, rerun = runs["again"], runs["rerun"]
    # Without --rerun-failed: nothing runs, nothing is rewritten.
    assert "trial(s) to run" not in again.stdout
    assert "skipping 3 trial(s) with a completed or failed record" in again.stdout
    assert runs["again_records"] == runs["first_records"]
    assert again.returncode == 1, again.stdout[-3000:]  # the sweep still holds failed trials
    assert "of which 2 failed before (run again with --rerun-failed)" in again.stdout
    # With it: the two failed trials run again and fail again, deterministically.
    assert rerun.returncode == 1, rerun.stdout[-3000:]
    assert "sweep fail: 2 trial(s) to run" in rerun.stdout
    assert "completed 0, failed 2, interrupted 0, skipped (already done) 1" in rerun.stdout
    recs = runs["rerun_records"]
    assert sorted(recs) == sorted(t.trial_id for t in case.values())
    assert recs[case["ok"].trial_id] == runs["first_records"][case["ok"].trial_id]
    for name in ("nan", "boom"):
        old, new = runs["first_records"][case[name].trial_id], recs[case[name].trial_id]
        assert new["status"] == "failed"
        assert new["updated"] >= old["updated"]
        assert {k: v for k, v in new["failure"].items() if k != "detail"} == \
            {k: v for k, v in old["failure"].items() if k != "detail"}


def test_regression_record_created_kept_across_rewrites(tmp_path, monkeypatch):
    """The engine rewrites the record each epoch; ``created`` must stay the first write's."""
    config = load_space(write_space(tmp_path / "s.yaml", "c", grid="maxup.m: [1]",
                                    seeds=1)).expand()[0].config
    path = tmp_path / "records" / "r.json"
    clock = iter(range(60))
    monkeypatch.setattr(records, "now", lambda: f"2026-01-01T00:00:{next(clock):02d}+00:00")
    env = {"device": "cpu"}
    first = records.build_record(config=config, history=[], status="running", timings={},
                                 env=env)
    records.write_record(path, first)
    second = records.build_record(config=config, history=[], status="completed", timings={},
                                  env=env)
    records.write_record(path, second)
    on_disk = records.read_record(path)
    assert on_disk["created"] == second["created"] == first["created"]
    assert on_disk["updated"] == second["updated"] > first["updated"]
    other = dict(config, seed=config["seed"] + 1)  # another trial's record is not inherited
    path2 = tmp_path / "records" / "r2.json"
    path2.write_text(path.read_text())
    monkeypatch.setattr(records, "now", lambda: "2026-02-02T00:00:00+00:00")
    records.write_record(path2, records.build_record(config=other, history=[],
                                                     status="running", timings={}, env=env))
    assert records.read_record(path2)["created"] == "2026-02-02T00:00:00+00:00"
