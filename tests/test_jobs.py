"""`maxup job` against a private, token-protected Ray head started by this module.

The head listens on free ports on 127.0.0.1 with its own short temp dir and its own token
file; it is stopped by SIGTERM to its ``ray start --block`` process (never ``ray stop``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from sweep_helpers import sweep_records

from maxup.cli import job as jobs
from maxup.errors import UsageError

pytestmark = [
    pytest.mark.slow,
    pytest.mark.ray,
    pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning"),  # in Ray
]

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
RAY = VENV_BIN / "ray"
WORKER_PORTS = range(10002, 20000)  # Ray's default worker port range


def _free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken and port not in WORKER_PORTS:
            taken.add(port)
            return port


def _train_available() -> bool:
    """True once a colleague's ``maxup train`` and ``configs/digits_smoke.yaml`` exist."""
    if not (ROOT / "configs" / "digits_smoke.yaml").is_file():
        return False
    probe = subprocess.run(
        [sys.executable, "-m", "maxup", "train", "--help"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    return probe.returncode == 0


class Head:
    def __init__(self, proc, address, token_file, log, tmp):
        self.proc, self.address, self.token_file, self.log, self.tmp = (
            proc,
            address,
            token_file,
            log,
            tmp,
        )


@pytest.fixture(scope="module")
def head():
    import requests

    tmp = Path(tempfile.mkdtemp(prefix="mxj", dir="/tmp"))  # short: unix socket paths
    token = secrets.token_hex(32)
    token_file = tmp / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    taken: set[int] = set()
    gcs, dash, agent, client = (_free_port(taken) for _ in range(4))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_file),
        RAY_USAGE_STATS_ENABLED="0",
    )
    log = tmp / "head.log"
    cmd = [
        str(RAY), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
        f"--temp-dir={tmp / 'r'}", "--num-cpus=1",
    ]  # fmt: skip
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, env=env, cwd=tmp, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                r = requests.get(
                    f"{address}/api/version",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=2,
                )
                if r.status_code == 200:
                    break
            except requests.exceptions.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dashboard did not answer:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield Head(proc, address, token_file, log, tmp)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def with_token(head, monkeypatch):
    for name in ("RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(head.token_file))
    monkeypatch.chdir(ROOT)
    return head


def job(*argv: str) -> int:
    """Parse ``maxup job ARGV`` as maxup.cli does (top-level dest "command") and run it."""
    parser = argparse.ArgumentParser(prog="maxup")
    jobs.configure(parser.add_subparsers(dest="command").add_parser("job"))
    args, extra = parser.parse_known_args(["job", *argv])
    assert args.command == "job" and not extra, (args, extra)  # no dest clash with the CLI
    return jobs.run(args)


def _submitted_id(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("raysubmit_"))


def test_submit_follows_logs_until_succeeded(with_token, capsys, tmp_path):
    head = with_token
    out_dir = tmp_path / "out"  # the job runs on this host, so it can write here
    if _train_available():
        command = [
            "python", "-m", "maxup", "train", "configs/digits_smoke.yaml",
            "--train.epochs=1", "--out", str(out_dir),
        ]  # fmt: skip
        expected = f"results in {out_dir}"
    else:  # `maxup train` not there: a job that imports the uploaded project
        command = ["python", "-c", "import maxup, sys; print('maxup-job-ok', sys.version)"]
        expected = "maxup-job-ok"
    assert job("submit", "--address", head.address, "--", *command) == 0
    out = capsys.readouterr().out
    job_id = _submitted_id(out)
    assert expected in out  # followed logs were printed
    if expected.startswith("results"):
        assert (out_dir / "record.json").is_file()
        assert "epoch   1/1" in out

    assert job("status", "--address", head.address, job_id) == 0
    assert "SUCCEEDED" in capsys.readouterr().out
    assert job("logs", "--address", head.address, job_id) == 0
    assert expected in capsys.readouterr().out


def test_failing_job_returns_1(with_token, capsys):
    code = "import sys; print('about to fail'); sys.exit(3)"
    assert job("submit", "--address", with_token.address, "--", "python", "-c", code) == 1
    captured = capsys.readouterr()
    assert "about to fail" in captured.out and "FAILED" in captured.err


def test_request_without_token_is_refused_in_one_line(head, monkeypatch, tmp_path):
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token either
    monkeypatch.chdir(ROOT)
    # In a fresh process: once any test in this one has run ray.init, Ray's client adds the
    # token it cached then to every request, so "no token" can only be tested from scratch.
    res = subprocess.run([sys.executable, "-m", "maxup", "job", "submit", "--address",
                          head.address, "--no-wait", "--", "echo", "never"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 2
    assert res.stderr == (
        f"maxup: error: job: the Ray cluster at {head.address} refused the request (HTTP 401): "
        "set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the cluster's token (see docs/cluster.md)\n"
    )
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)  # wrong token
    with pytest.raises(UsageError, match=r"refused the request \(HTTP 403\)") as err:
        job("list", "--address", head.address)
    assert "\n" not in str(err.value)


def test_unreachable_address_is_one_line(monkeypatch):
    port = _free_port(set())  # nothing listens there
    with pytest.raises(UsageError, match="cannot reach the Ray job API") as err:
        job("list", "--address", f"http://127.0.0.1:{port}")
    assert "\n" not in str(err.value)


def test_status_list_stop_long_job(with_token, capsys):
    head = with_token
    assert job("submit", "--address", head.address, "--no-wait", "--", "sleep", "60") == 0
    job_id = _submitted_id(capsys.readouterr().out)
    deadline = time.monotonic() + 30
    while True:
        assert job("status", "--address", head.address, job_id) == 0
        status = capsys.readouterr().out
        if "RUNNING" in status or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert f"{job_id}\tRUNNING" in status

    # Address from the environment instead of --address.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_API_SERVER_ADDRESS", head.address)
        assert job("list") == 0
    listing = capsys.readouterr().out
    assert any(
        line.startswith(f"{job_id}\tRUNNING") and "sleep 60" in line
        for line in listing.splitlines()
    )

    assert job("stop", "--address", head.address, job_id) == 0
    assert capsys.readouterr().out.strip() == f"{job_id}\tSTOPPED"
    with pytest.raises(UsageError, match="no job 'raysubmit_nope'"):
        job("status", "--address", head.address, "raysubmit_nope")


def test_maxup_cli_wiring_reports_unreachable_in_one_line():
    """`python -m maxup job ...` goes through maxup.cli: exit 2, one line on stderr."""
    port = _free_port(set())
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run(
        [sys.executable, "-m", "maxup", "job", "submit", "--address",
         f"http://127.0.0.1:{port}", "--", "python", "-c", "print(1)"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(
        f"maxup: error: job: cannot reach the Ray job API at http://127.0.0.1:{port}"
    )


def test_sweep_job_joins_the_cluster_and_writes_records(with_token, capsys, tmp_path):
    """The README's cluster path in miniature: `maxup job submit -- maxup sweep --address auto`."""

    import yaml

    space = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    space.update(name="jobsweep", seeds=1)
    space["base"]["train"]["epochs"] = 2
    path = tmp_path / "jobsweep.yaml"
    path.write_text(yaml.safe_dump(space))
    storage = tmp_path / "results"  # the job runs on this host, so it can write here
    assert job("submit", "--address", with_token.address, "--", "python", "-m", "maxup",
               "sweep", str(path), "--address", "auto", "--storage", str(storage),
               "--no-table") == 0
    out = capsys.readouterr().out
    assert "sweep finished" in out and "completed 2, failed 0" in out
    recs = list(sweep_records(storage, "jobsweep").values())
    assert len(recs) == 2 and {r["status"] for r in recs} == {"completed"}
    assert "1 at a time" in out  # the head has 1 CPU: the sweep sized itself to the cluster
