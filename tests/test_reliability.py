"""Issue 13, Ray locked down and clusters that do not answer.

- The embedded Ray forces token authentication whatever ``RAY_AUTH_MODE`` says (a GCS call
  without the token is refused), creates its token file 0600, and no longer prints Ray's
  advice to set ``RAY_AUTH_MODE=disabled``.
- ``--address`` naming no running cluster is a bounded wait and one line (exit 2), before the
  sweep's manifest is written or Ray joined.
- The embedded Ray's watchdog kills what a SIGKILLed driver had started (children in their own
  session or re-parented away included) and nothing after a normal exit.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from proc_helpers import alive, simulated_cluster

from maxup.cli import main

SPACE = "seeds: 1\nbase: {model: {name: mlp}, data: {name: digits}, train: {epochs: 1}}\n"


def _refused(capsys, argv) -> str:
    rc = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize("address, says", [
    ("127.0.0.1:1", "Connection refused"),
    ("nonsense", "not HOST:PORT"),
])
def test_regression_unreachable_cluster_is_one_line_and_writes_nothing(tmp_path, capsys,
                                                                        address, says):
    """``--address 127.0.0.1:1`` waited forever after writing sweep.json."""
    space = tmp_path / "s.yaml"
    space.write_text(SPACE)
    storage = tmp_path / "store"
    t0 = time.monotonic()
    line = _refused(capsys, ["sweep", str(space), "--address", address, "--storage",
                             str(storage)])
    assert time.monotonic() - t0 < 60
    assert line.startswith(f"maxup: error: --address {address!r}: ") and says in line
    assert not storage.exists()


def test_regression_address_auto_without_a_cluster_is_one_line(tmp_path, capsys, monkeypatch):
    """``--address auto`` with no cluster printed a 29-line ConnectionError and left
    ``sweep.json`` and ``records/`` behind."""
    import ray._private.services as services

    def no_cluster(addr, temp_dir=None):
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(services, "canonicalize_bootstrap_address", no_cluster)
    space = tmp_path / "s.yaml"
    space.write_text(SPACE)
    storage = tmp_path / "store"
    line = _refused(capsys, ["sweep", str(space), "--address", "auto", "--storage",
                             str(storage)])
    assert "no running Ray cluster found" in line
    assert not storage.exists()


def test_probe_refuses_a_service_that_is_not_a_ray_gcs(tmp_path):
    """Something that accepts TCP but is no GCS (here a plain socket that never speaks
    HTTP/2) is refused within the timeout, not waited on."""
    import socket

    from maxup.errors import UsageError
    from maxup.platform.distributed import probe_cluster

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(UsageError, match="not a Ray GCS"):
            probe_cluster(f"127.0.0.1:{port}", timeout_s=2)
        assert time.monotonic() - t0 < 15


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    """No Ray running, and a HOME without ~/.ray/auth_token."""
    import ray
    from ray._raylet import AuthenticationTokenLoader

    if ray.is_initialized():
        ray.shutdown()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    AuthenticationTokenLoader.instance().reset_cache()
    yield home
    ray.shutdown()
    AuthenticationTokenLoader.instance().reset_cache()


@pytest.mark.ray
@pytest.mark.parametrize("mode", ["disabled", None], ids=["RAY_AUTH_MODE=disabled", "unset"])
def test_regression_embedded_ray_forces_token_auth(fresh_home, monkeypatch, caplog, mode):
    """The embedded Ray never set ``RAY_AUTH_MODE``: with ``disabled`` in the environment a
    sweep's control store was open to anyone on the network, and the token file Ray created
    was 0644. A GCS call without the token must be refused."""
    import grpc
    from test_security import _gcs_call

    from maxup.platform.distributed import start_local_ray

    if mode is None:
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    else:
        monkeypatch.setenv("RAY_AUTH_MODE", mode)
    with caplog.at_level(logging.WARNING):
        start_local_ray(30.0)
    assert _gcs_call() == grpc.StatusCode.UNAUTHENTICATED  # a client without the token
    assert _gcs_call((("authorization", "Bearer not-the-token"),)) == \
        grpc.StatusCode.UNAUTHENTICATED
    token = Path(fresh_home) / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    header = {"authorization": f"Bearer {token.read_text().strip()}"}
    assert _gcs_call(tuple(header.items())) == grpc.StatusCode.OK
    assert "RAY_AUTH_MODE=disabled" not in caplog.text


# --------------------------------------------------------------------------- node loss

@pytest.fixture
def three_node_cluster(monkeypatch):
    """A simulated cluster on this machine: a head with no CPUs and two 1-CPU nodes."""
    yield from simulated_cluster(monkeypatch)


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_survives_losing_a_node_mid_sweep(three_node_cluster, tmp_path):
    """Fault injection: a 4-trial sweep on two 1-CPU nodes; once a trial is training, one
    node crashes (no graceful shutdown) and a replacement joins. Every trial finishes
    exactly once (each epoch once in its record), no record is lost, the table is complete."""
    import threading

    from maxup import records
    from maxup.analysis.load import load_records, summary
    from maxup.platform.space import load_space
    from maxup.platform.sweep import run_sweep, sweep_layout

    cluster, nodes = three_node_cluster
    epochs = 4
    space = tmp_path / "nodeloss.yaml"
    space.write_text(
        "name: nodeloss\n"
        "base: {model: {name: mlp}, data: {name: digits, subset: 600}, "
        "augment: {ops: [gaussian], sigma: 0.3}, maxup: {m: 2, warmup_epochs: 0}, "
        f"train: {{epochs: {epochs}, batch_size: 32, device: cpu, progress: false}}}}\n"
        "grid: {maxup.m: [1, 2]}\nseeds: 2\nresources: {cpus_per_trial: 1}\n"
        "concurrency: 2\nretries: 3\n")
    spec = load_space(space)
    trials = spec.expand()
    storage = tmp_path / "store"
    box: dict = {}

    def sweep() -> None:
        try:
            box["summary"] = run_sweep(spec, trials, storage, address=cluster.address,
                                       echo=lambda line: None)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            box["error"] = exc

    thread = threading.Thread(target=sweep, daemon=True)
    thread.start()
    layout = sweep_layout(storage, spec.name)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and "summary" not in box and "error" not in box:
        running = [records.load_record(layout.record(t.trial_id)) for t in trials]
        if any(r is not None and r.history for r in running):
            break  # a trial has finished an epoch: lose a node now
        time.sleep(0.2)
    assert "error" not in box, box.get("error")
    cluster.remove_node(nodes[0], allow_graceful=False)
    cluster.add_node(num_cpus=1)  # the replacement (add_node works from the main thread only)
    thread.join(timeout=600)
    assert not thread.is_alive(), "the sweep did not finish after the node was replaced"
    assert "error" not in box, box.get("error")
    result = box["summary"]
    assert sorted(result.completed) == sorted(t.trial_id for t in trials), result.line()
    for t in trials:
        rec = records.load_record(layout.record(t.trial_id))
        assert rec is not None and rec.completed, t.trial_id
        assert [h["epoch"] for h in rec.history] == list(range(1, epochs + 1)), t.trial_id
    df = load_records(layout.root)
    s = summary(df)
    assert (s["completed"], s["failed"], s["running"], s["not_run"]) == (4, 0, 0, 0)


class _Killed(BaseException):
    """Ends a trial the way a SIGKILL or a lost node does: no handler sees it, no record
    is marked failed."""


@pytest.mark.parametrize("retries", [1, 0])
def test_regression_trial_lost_after_tunes_retries_is_resumed_in_a_further_pass(
        tmp_path, monkeypatch, retries):
    """CI saw a node-loss sweep end "completed 3, interrupted 1" with retries 3: Tune spent a
    trial's retries while the dead node was not yet known dead. A trial that ends a Tune run
    neither completed nor failed now gets one more pass (when the space allows retries),
    which resumes it from its checkpoint. Tune is replaced here by a pass that runs each
    trial in-process and, in the first pass, kills one after its first epoch."""
    from maxup import records
    from maxup.platform import sweep as sweep_mod
    from maxup.platform.space import load_space

    space = tmp_path / "lost.yaml"
    space.write_text(
        "name: lost\n"
        "base: {model: {name: mlp}, data: {name: digits, subset: 200}, "
        "augment: {ops: [gaussian], sigma: 0.3}, maxup: {m: 2, warmup_epochs: 0}, "
        "train: {epochs: 3, batch_size: 50, device: cpu, progress: false}}\n"
        f"grid: {{maxup.m: [1, 2]}}\nseeds: 1\nretries: {retries}\n")
    spec = load_space(space)
    trials = spec.expand()
    victim = trials[1].trial_id
    calls: list[tuple[int, list[str]]] = []

    def fake_pass(spec, todo, layout, progress, *, attempt, **_):
        calls.append((attempt, [t.trial_id for t in todo]))
        sweep = {"name": spec.name, "paper_table": spec.paper_table, "cpus_per_worker": 1.0,
                 "mlflow": None}
        for t in todo:
            def die_after_epoch_1(metrics, _checkpoint_dir, t=t):
                if attempt == 0 and t.trial_id == victim and metrics["epoch"] == 1:
                    raise _Killed
            try:
                sweep_mod.run_trial(sweep_mod._trial_payload(t), str(layout.root), sweep,
                                    log_to=die_after_epoch_1)
            except _Killed:
                pass

    monkeypatch.setattr(sweep_mod, "start_ray", lambda *a, **k: (2.0, 0.0))
    monkeypatch.setattr(sweep_mod, "_tune_pass", fake_pass)
    lines: list[str] = []
    result = sweep_mod.run_sweep(spec, trials, tmp_path / "st", echo=lines.append)
    layout = sweep_mod.sweep_layout(tmp_path / "st", spec.name)
    rec = records.load_record(layout.record(victim))
    everyone = [t.trial_id for t in trials]
    if retries == 0:  # no retries asked for: the lost trial is reported, not rerun
        assert calls == [(0, everyone)]
        assert result.interrupted == [victim], result.line()
        assert rec.status is records.Status.RUNNING and len(rec.history) == 1
        return
    assert calls == [(0, everyone), (1, [victim])]
    assert any("1 trial(s) ended without a final record" in line and "pass 2" in line
               for line in lines), lines
    assert sorted(result.completed) == sorted(everyone) and not result.interrupted
    assert [h["epoch"] for h in rec.history] == [1, 2, 3]
    log = layout.trial(victim).log.read_text()
    assert re.findall(r"^resumed from .* after epoch (\d+)$", log, re.M) == ["1"], log


# --------------------------------------------------------------------------- the watchdog

_FAKE_DRIVER = """\
import subprocess, sys, time
from maxup.platform import reaper
reaper.start()
quiet = {"stdout": subprocess.DEVNULL}
kids = [subprocess.Popen(["sleep", "60"], **quiet),             # a child
        subprocess.Popen(["setsid", "sleep", "60"], **quiet)]   # a child in its own session
# A grandchild that leaves the driver's tree when its parent exits (re-parented).
sh = subprocess.Popen(["sh", "-c", "sleep 60 >/dev/null & echo $!; sleep 0.6"],
                      stdout=subprocess.PIPE, text=True)
orphan = int(sh.stdout.readline())
sh.wait()
time.sleep(0.5)
watchdog = [reaper._reaper.pid] if reaper._reaper else []
print(kids[0].pid, kids[1].pid, orphan, *watchdog, flush=True)
if sys.argv[1] == "exit":
    sys.stdin.readline()  # the test has read the process table: exit now
    sys.exit(0)
time.sleep(60)
"""


def _watchdog_case(mode: str):
    """Run the fake driver until it has its processes; returns it and (pid, start time) of
    its two children, the re-parented grandchild and its watchdog."""
    from maxup.platform.reaper import process_table

    driver = subprocess.Popen([sys.executable, "-c", _FAKE_DRIVER, mode], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              start_new_session=True)
    pids = [int(p) for p in driver.stdout.readline().split()]
    table = process_table()
    assert len(pids) >= 3 and all(p in table for p in pids), pids
    # Only now may an "exit" driver exit: its watchdog's grace period (0.5 s) could otherwise
    # end before a loaded machine gets to read the table above.
    driver.stdin.write("go\n")
    driver.stdin.close()
    return driver, {p: table[p][1] for p in pids}


def _kill_all(driver: subprocess.Popen, procs: dict[int, int]) -> None:
    driver.kill()
    driver.wait()
    driver.stdout.close()
    for pid in alive(procs):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watchdog is Linux-only")
def test_regression_processes_outlived_a_sigkilled_driver():
    """After a driver SIGKILL, what it had started lived on (Ray's agents for good, trial
    workers for seconds). The watchdog kills its children, one in its own session and one
    re-parented away from the driver's tree, then leaves itself."""
    driver, procs = _watchdog_case("kill")
    try:
        driver.kill()
        driver.wait()
        deadline = time.monotonic() + 2
        while alive(procs) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(procs), "outlived the driver by 2 s"
    finally:
        _kill_all(driver, procs)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watchdog is Linux-only")
def test_regression_ray_agents_outlived_a_normal_exit_after_ctrl_c():
    """After a Ctrl-C, the driver exited normally (its shutdown ran) and Ray's dashboard and
    runtime-env agents stayed (issue 27). At a normal exit the watchdog now kills what the
    driver's shutdown left (here: everything, the fake driver shuts nothing down) after its
    grace period, then leaves itself."""
    from maxup.platform.reaper import GRACE_S

    driver, procs = _watchdog_case("exit")
    try:
        assert len(procs) == 4  # the watchdog runs
        assert driver.wait(timeout=10) == 0
        assert driver.stdout.read() == ""  # nothing printed after the pids
        deadline = time.monotonic() + GRACE_S + 2
        while alive(procs) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(procs), "outlived the driver's normal exit"
    finally:
        _kill_all(driver, procs)


def test_regression_embedded_ray_that_does_not_start_is_one_line_exit_1(tmp_path, capsys,
                                                                        monkeypatch):
    """With three Ray test files at once on two cores, Ray's node did not register within its
    fixed 30 s and ``maxup sweep`` ended in a 30-line traceback. It is now one line, exit 1."""
    import ray

    def node_timed_out(*args, **kwargs):
        raise Exception("The current node timed out during startup. This could happen "
                        "because some of the raylet failed to startup or the GCS has become "
                        "overloaded.")

    monkeypatch.setattr(ray, "init", node_timed_out)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    space = tmp_path / "s.yaml"
    space.write_text(SPACE)
    rc = main(["sweep", str(space), "--storage", str(tmp_path / "store")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith("maxup: error: the embedded local Ray did not start (The current "
                             "node timed out during startup"), err
    assert "run the same command again" in err[0]
