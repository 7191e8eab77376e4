"""Security properties that can be checked on one machine.

- The embedded Ray the platform starts (``start_local_ray``, the sweep's ``start_ray(None)``)
  runs with token authentication (the GCS refuses calls without the token), starts no
  dashboard, and starts only the services Ray 2.60 always starts. Ray 2.60 has no
  loopback-only mode: GCS, raylet and core workers listen on all interfaces (``::``), the
  dashboard agent's gRPC on 0.0.0.0, the runtime-env agent and the agent's HTTP port on the
  node IP, whatever ``_node_ip_address`` says (``127.0.0.1`` is rewritten to the node IP); the
  token is what guards them. The test fails if anything else starts listening.
- Checkpoints are loaded with ``weights_only=True``: a checkpoint carrying a pickled object
  whose ``__reduce__`` runs code is refused, and the code never runs.
- Nothing unpickles from storage: records are JSON; no ``pickle.load``/``torch.load`` without
  ``weights_only=True`` in the package (CIFAR's own pickle batches are the one listed
  exception).
"""

from __future__ import annotations

import ast
import os
import pickle
import socket
from pathlib import Path

import pytest
import torch
from proc_helpers import cmdline, descendants

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "maxup"


# --------------------------------------------------------------------------- sockets via /proc

def _addr(hexaddr: str) -> tuple[str, int]:
    ip, port = hexaddr.split(":")
    raw = bytes.fromhex(ip)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words), int(port, 16)


def _listening_inodes() -> dict[int, tuple[str, int]]:
    out = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A":  # TCP_LISTEN
                out[int(f[9])] = _addr(f[1])
    return out


def _listeners(pids: set[int]) -> list[tuple[str, str, int]]:
    """(process kind, ip, port) of every listening TCP socket the processes hold."""
    inodes = _listening_inodes()
    out = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                out.append((_kind(pid), *inodes[int(target[8:-1])]))
    return sorted(set(out))


def _kind(pid: int) -> str:
    cmd = cmdline(pid)
    if pid == os.getpid():
        return "driver"
    for kind in ("gcs_server", "raylet", "dashboard", "DashboardAgent", "RuntimeEnvAgent",
                 "log_monitor", "monitor.py", "ray_client_server"):
        if kind in cmd:
            return kind
    if cmd.startswith("ray::"):
        return "worker"
    return cmd[:60]


LOOPBACK = {"127.0.0.1", "::1"}
#: What Ray 2.60 binds beyond loopback whatever ray.init is told (measured; see module doc).
#: ``dashboard`` here is the head process Ray starts even with ``include_dashboard=False``:
#: ``--disable-frontend --modules-to-load=UsageStatsHead``, a gRPC port on 0.0.0.0 and no
#: HTTP frontend; ``monitor.py`` is the autoscaler monitor (a metrics port on 0.0.0.0).
RAY_ALWAYS_WIDE = {"driver", "gcs_server", "raylet", "worker", "DashboardAgent",
                   "RuntimeEnvAgent", "dashboard", "monitor.py"}


def _ray_processes() -> set[int]:
    import ray

    node = ray._private.worker._global_node
    # Only the node's own processes and their children: this test process may have other
    # children (e.g. a multiprocessing resource tracker left by an earlier test).
    roots = [i.process.pid for infos in node.all_processes.values() for i in infos]
    return descendants(roots)


def _gcs_call(metadata=None):
    """One GetAllNodeInfo call to this Ray's GCS; returns the gRPC status code."""
    import grpc
    import ray
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    port = ray._private.worker._global_node.gcs_address.rsplit(":", 1)[1]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10,
                                metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


def _check_embedded_ray() -> None:
    import grpc
    import ray
    from ray._private.authentication.authentication_token_setup import (
        AuthenticationTokenLoader,
    )
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    # Token authentication is on, and the GCS really demands the token.
    assert is_token_auth_enabled()
    assert _gcs_call() == grpc.StatusCode.UNAUTHENTICATED
    assert _gcs_call((("authorization", "Bearer not-the-token"),)) == \
        grpc.StatusCode.UNAUTHENTICATED
    header = AuthenticationTokenLoader.instance().get_token_for_http_header()
    assert _gcs_call(tuple((k.lower(), v) for k, v in header.items())) == grpc.StatusCode.OK

    # No dashboard: no process, no 8265, nothing but Ray's fixed set of services listening.
    @ray.remote(num_cpus=0)
    def pid() -> int:
        return os.getpid()

    ray.get(pid.remote())  # at least one worker is up
    pids = _ray_processes()
    listeners = _listeners(pids)
    kinds = {k for k, _, _ in listeners}
    for pid in pids:  # the reduced head process Ray always starts: no web frontend
        if _kind(pid) == "dashboard":
            assert "--disable-frontend" in cmdline(pid)
    assert not [x for x in listeners if x[2] == 8265]
    assert "ray_client_server" not in kinds
    wide = sorted(x for x in listeners if x[1] not in LOOPBACK)
    unexpected = [x for x in wide if x[0] not in RAY_ALWAYS_WIDE]
    assert not unexpected, f"services listening beyond loopback: {unexpected}"


@pytest.fixture
def no_ray(monkeypatch):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_start_local_ray_token_auth_no_dashboard(no_ray, monkeypatch):
    from ray._common.usage.usage_lib import usage_stats_enabled

    from maxup.platform.distributed import start_local_ray

    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    start_local_ray(30.0)
    _check_embedded_ray()
    # Ray's usage-stats reporting is off in every process the embedded Ray started.
    assert not usage_stats_enabled()
    checked = set()
    for pid in _ray_processes() - {os.getpid()}:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline(pid).startswith("ray::"):
            continue  # setproctitle reuses the environ area of ray:: processes: unreadable
        assert b"RAY_USAGE_STATS_ENABLED=0" in environ, cmdline(pid)
        checked.add(_kind(pid))
    assert {"gcs_server", "raylet"} <= checked, checked


@pytest.mark.ray
def test_sweep_start_ray_token_auth_no_dashboard(no_ray):
    from maxup.platform.sweep import start_ray

    start_ray(None)
    _check_embedded_ray()


@pytest.mark.ray
def test_regression_start_local_ray_ignores_ray_address(no_ray, monkeypatch):
    """A stray ``RAY_ADDRESS`` (or the host's last ``ray start``) used to be joined.

    ``ray.init()`` without an address connects to ``RAY_ADDRESS`` or the cluster named in
    ``/tmp/ray/ray_current_cluster`` — someone else's Ray, or a refusal because ``num_cpus``
    cannot be given when connecting. ``start_local_ray`` now passes ``address="local"``.
    """
    from maxup.platform.distributed import start_local_ray

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # nothing listens there
    start_local_ray(30.0)
    node = no_ray._private.worker._global_node
    assert node.head and not node.gcs_address.endswith(":1")


# --------------------------------------------------------------------------- checkpoints

class _Payload:
    """Unpickling this runs ``open(marker, "w")`` — the shape of a malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    from maxup.config import RunConfig, to_dict

    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    state = {"format": 1, "config": to_dict(RunConfig()), "model": {}, "optimizer": {},
             "epoch": 1, "history": [], "extra": _Payload(marker)}
    torch.save(state, path)
    return path, marker


def test_evil_checkpoint_payload_is_real(tmp_path):
    """The payload does run when unpickled without weights_only (so the tests below mean it)."""
    path, marker = _evil_checkpoint(tmp_path)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


def test_engine_load_checkpoint_refuses_pickled_objects(tmp_path):
    from maxup.engine import load_checkpoint

    path, marker = _evil_checkpoint(tmp_path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
    assert not marker.exists()


def test_certify_load_model_refuses_pickled_objects(tmp_path):
    from maxup.certify import load_model_from_checkpoint
    from maxup.errors import DataError

    path, marker = _evil_checkpoint(tmp_path)
    with pytest.raises(DataError, match="weights_only=True"):
        load_model_from_checkpoint(path)
    assert not marker.exists()


def test_train_resume_refuses_pickled_checkpoint(tmp_path):
    """``maxup train --resume`` on a tampered ``checkpoints/last.pt`` runs no code."""
    from maxup.engine import train

    path, marker = _evil_checkpoint(tmp_path)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    path.rename(tmp_path / "run" / "checkpoints" / "last.pt")
    cfg = {"model": {"name": "mlp"}, "data": {"name": "digits"},
           "train": {"epochs": 1, "device": "cpu", "progress": False}}
    with pytest.raises(pickle.UnpicklingError):
        train(cfg, tmp_path / "run", resume=True, log=None)
    assert not marker.exists()


# --------------------------------------------------------------------------- no unpickling

def test_read_record_does_not_unpickle(tmp_path):
    from maxup.records import read_record

    marker = tmp_path / "code-ran"
    path = tmp_path / "record.json"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    assert read_record(path) is None
    assert not marker.exists()


#: Files allowed to unpickle, with the reason. CIFAR-10/100 ship only as pickle batches.
KNOWN_UNPICKLERS: dict[str, str] = {}  # CIFAR batches go through a restricted Unpickler

_UNPICKLING_CALLS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"),
                     ("cloudpickle", "load"), ("cloudpickle", "loads"), ("dill", "load"),
                     ("dill", "loads"), ("joblib", "load"), ("pd", "read_pickle"),
                     ("pandas", "read_pickle"), ("shelve", "open"), ("marshal", "load"),
                     ("marshal", "loads")}


def _unsafe_calls(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = (func.value.id if isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name) else None,
                func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None))
        kw = {k.arg: k.value for k in node.keywords}
        if name in _UNPICKLING_CALLS:
            found.append(f"{name[0]}.{name[1]} (line {node.lineno})")
        elif name == ("torch", "load"):
            ok = isinstance(kw.get("weights_only"), ast.Constant) and \
                kw["weights_only"].value is True
            if not ok:
                found.append(f"torch.load without weights_only=True (line {node.lineno})")
        elif name[1] == "load" and name[0] in ("np", "numpy"):
            flag = kw.get("allow_pickle")
            if isinstance(flag, ast.Constant) and flag.value is True:
                found.append(f"np.load(allow_pickle=True) (line {node.lineno})")
    return found


def test_scanner_catches_unsafe_loads():
    src = ("import pickle, torch\npickle.load(f)\ntorch.load(p)\n"
           "torch.load(p, weights_only=False)\ntorch.load(p, weights_only=True)\n")
    assert len(_unsafe_calls(src)) == 3


def test_package_never_unpickles_from_storage():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        calls = _unsafe_calls(path.read_text())
        if calls and rel not in KNOWN_UNPICKLERS:
            offenders[rel] = calls
    assert not offenders, f"unpickling from storage: {offenders}"


def test_tampered_cifar_batch_is_refused_without_running_code(tmp_path):
    from maxup.data import build_dataset
    from maxup.errors import DataError

    marker = tmp_path / "code-ran"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(DataError, match="refusing to load"):
        build_dataset("cifar10", split="test", root=str(tmp_path))
    assert not marker.exists()
