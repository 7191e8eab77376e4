"""`cluster.yaml` passes Ray's own launcher validation offline and keeps Ray off the internet."""

from __future__ import annotations

import copy
import ipaddress
import re
from pathlib import Path

import pytest
import yaml

pytest.importorskip("jsonschema")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
RAY_PORTS = (6379, 8265, 10001, 8076, 52365)
PINS = ("torch==2.14.1", "torchvision==0.29.1", "ray[default,tune,train]==2.60.0")


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def test_ray_validator_accepts_cluster_yaml(prepared):
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] == "head"
    assert {"head", "gpu_cifar", "gpu_imagenet"} <= set(prepared["available_node_types"])


def test_ray_validator_refuses_a_typo(raw):
    bad = copy.deepcopy(raw)
    bad["max_wokers"] = bad.pop("max_workers")
    import jsonschema

    with pytest.raises(jsonschema.ValidationError, match="max_wokers"):
        validate_config(prepare_config(bad))

    bad = copy.deepcopy(raw)
    bad["available_node_types"]["gpu_cifar"]["max_wokers"] = 8
    with pytest.raises(jsonschema.ValidationError, match="max_wokers"):
        validate_config(prepare_config(bad))


def _is_public(cidr: str) -> bool:
    net = ipaddress.ip_network(cidr, strict=False)
    return net.prefixlen == 0 or not (net.is_private or net.is_loopback)


def _ports(rule: dict) -> range:
    if str(rule.get("IpProtocol")) == "-1":
        return range(0, 65536)
    low, high = int(rule.get("FromPort", 0)), int(rule.get("ToPort", 65535))
    if low == -1:
        return range(0, 65536)
    return range(low, high + 1)


def _sources(rule: dict) -> list[str]:
    return [r["CidrIp"] for r in rule.get("IpRanges", [])] + [
        r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])
    ]


def test_no_ray_port_open_to_the_internet(prepared, raw):
    rules = prepared["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        for cidr in _sources(rule):
            if cidr in ("0.0.0.0/0", "::/0") or _is_public(cidr):
                ports = _ports(rule)
                assert not any(p in ports for p in RAY_PORTS), (rule, cidr)
                assert set(ports) <= {22}, f"only SSH may face the internet: {rule}"
    # The dashboard / job API stays on the head's loopback: reached by `ray dashboard` (SSH).
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start
    # No ingress rule may be smuggled in through a node's own config either.
    for node_type in raw["available_node_types"].values():
        assert "IpPermissions" not in node_type["node_config"]


def test_token_auth_stays_on(prepared):
    head_start = " ".join(prepared["head_start_ray_commands"])
    worker_start = " ".join(prepared["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in worker_start
    everything = yaml.safe_dump(prepared)
    assert "RAY_AUTH_MODE=disabled" not in everything
    assert any("get-auth-token --generate" in c for c in prepared["head_setup_commands"])
    assert any("auth_token" in f for f in prepared["cluster_synced_files"])


def test_head_runs_no_training_and_every_type_has_resources(prepared):
    types = prepared["available_node_types"]
    for name, node_type in types.items():
        assert "resources" in node_type and "CPU" in node_type["resources"], name
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and head["resources"].get("GPU", 0) == 0
    assert types["gpu_cifar"]["resources"] == {"CPU": 4, "GPU": 1}
    assert types["gpu_cifar"]["node_config"]["InstanceType"] == "g5.xlarge"
    assert types["gpu_imagenet"]["resources"] == {"CPU": 96, "GPU": 8}
    assert types["gpu_imagenet"]["node_config"]["InstanceType"] == "p4d.24xlarge"
    for name in ("gpu_cifar", "gpu_imagenet"):
        assert types[name]["min_workers"] == 0
        assert 0 < types[name]["max_workers"] <= prepared["max_workers"]


def test_setup_installs_pinned_deps_and_the_synced_project(prepared, raw):
    for commands in (prepared["head_setup_commands"], prepared["worker_setup_commands"]):
        joined = " ".join(commands)
        for pin in PINS:
            assert pin in joined, pin
        mounted = next(iter(raw["file_mounts"]))
        assert re.search(rf"pip install .*-e {re.escape(mounted)}", joined)
    assert list(raw["file_mounts"].values()) == ["."]
    assert ".venv" in raw["rsync_exclude"] and ".git" in raw["rsync_exclude"]


def test_comments_say_what_to_change():
    text = CLUSTER_YAML.read_text()
    for needle in ("s3://YOUR-BUCKET/maxup", "region", "ImageId", "IamInstanceProfile"):
        assert needle in text
    assert "ray dashboard cluster.yaml" in text
