"""Issue 27, item 7: a dry run with `--address` of a live cluster priced cluster.yaml (the AWS
file), not the cluster. It now reads the cluster's alive nodes from its GCS — no driver joins,
nothing starts — and prices those; when the cluster cannot be read it prices cluster.yaml and
says plainly why the live cluster was not priced."""

from __future__ import annotations

import socket

import pytest
from test_reliability import SPACE, fresh_home  # noqa: F401 - the fixture

from maxup.cli import main
from maxup.platform import plan
from maxup.platform.space import load_space


def _space(tmp_path, body: str = SPACE) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\n{body}")
    return str(path)


def test_live_target_fills_alive_nodes_with_their_gpu_models(tmp_path):
    spec = load_space(_space(tmp_path, "seeds: 8\nbase: {model: {name: resnet20}, data: "
                                       "{name: cifar10}}\nresources: {cpus_per_trial: 4, "
                                       "gpus_per_trial: 1}\nconcurrency: 6\n"))
    nodes = [
        {"address": "10.0.0.1", "head": True, "instance_type": None,
         "resources": {"CPU": 4.0, "memory": 1e10}},
        {"address": "10.0.0.3", "head": False, "instance_type": None,
         "resources": {"CPU": 16.0, "GPU": 4.0, "accelerator_type:H100": 1.0}},
        {"address": "10.0.0.2", "head": False, "instance_type": None,
         "resources": {"CPU": 8.0, "GPU": 1.0, "accelerator_type:A10G": 1.0}},
        {"address": "10.0.0.4", "head": False, "instance_type": None,
         "resources": {"CPU": 4.0, "GPU": 2.0}},
    ]
    target = plan.live_target("10.0.0.1:6379", nodes, spec, spec.expand())
    # 8 CPU / 4 per trial, 1 GPU: 1 slot; 16 CPU / 4, 4 GPUs: 4; 4 CPU / 4, 2 GPUs: 1 — the
    # last one cut by concurrency 6
    assert target.slots == ["NVIDIA A10G"] + ["NVIDIA H100 80GB HBM3"] * 4 + ["cluster GPU"]
    assert target.kinds == {"NVIDIA A10G": "gpu", "NVIDIA H100 80GB HBM3": "gpu",
                            "cluster GPU": "gpu"}
    assert target.description == (
        "the live cluster at 10.0.0.1:6379 (6 slots on 3 of its 4 alive node(s): "
        "1 × 10.0.0.2: 8 CPU, 1 GPU, NVIDIA A10G; 4 × 10.0.0.3: 16 CPU, 4 GPU, "
        "NVIDIA H100 80GB HBM3; 1 × 10.0.0.4: 4 CPU, 2 GPU, cluster GPU; an autoscaling "
        "cluster may add nodes)")
    assert plan.live_target("h:1", nodes[:1], spec, spec.expand()) is None


def test_an_unreachable_address_prices_cluster_yaml_and_says_so(tmp_path, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    storage = tmp_path / "store"
    assert main(["sweep", _space(tmp_path), "--dry-run", "--address", f"127.0.0.1:{port}",
                 "--storage", str(storage)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("plan: "))
    assert "cluster.yaml (" in line
    assert line.endswith(f"; not the cluster at --address: address '127.0.0.1:{port}': no Ray "
                         f"cluster answers at 127.0.0.1:{port} (Connection refused within "
                         "5 s)")
    assert not storage.exists()


@pytest.mark.ray
def test_regression_a_dry_run_with_address_prices_the_live_cluster(
        fresh_home, tmp_path, capsys):  # noqa: F811 - the fixture
    """It priced ./cluster.yaml's AWS nodes. The cluster here is this process's own embedded
    Ray (token authentication on, its token in the fresh HOME)."""
    import os

    import ray

    from maxup.platform.distributed import start_local_ray

    start_local_ray()
    address = ray.get_runtime_context().gcs_address
    storage = tmp_path / "store"
    assert main(["sweep", _space(tmp_path, SPACE + "concurrency: 2\n"), "--dry-run",
                 "--address", address, "--storage", str(storage)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("plan: "))
    cpus = float(os.cpu_count())
    slots = min(2, int(cpus))
    assert line == (f"plan: the live cluster at {address} ({slots} slots on 1 of its 1 alive "
                    f"node(s): {slots} × {address.rsplit(':', 1)[0]} (head): {cpus:g} CPU, 0 "
                    "GPU; an autoscaling cluster may add nodes)")
    assert "cluster.yaml" not in out
    assert not storage.exists()
