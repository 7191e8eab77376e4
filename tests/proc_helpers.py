"""Process helpers: the process tree over /proc, for tests that must touch only their own
Ray's processes, and a free local port for a gloo rendezvous."""

import os
import socket
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for ``init_method=tcp://``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(procs: dict[int, int]) -> list[int]:
    """The processes of ``procs`` (pid -> start time) still running: same pid, same start
    time (a reused pid is another process), not a zombie."""
    from maxup.platform.reaper import process_table

    table = process_table()
    return [pid for pid, start in procs.items() if table.get(pid, (0, None))[1] == start]


def proc_children() -> dict[int, list[int]]:
    """Parent pid → child pids of every process on the host."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            kids.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(d))
    return kids


def descendants(roots: list[int]) -> set[int]:
    """The roots and every process below them."""
    kids, seen, stack = proc_children(), set(), list(roots)
    while stack:
        p = stack.pop()
        if p not in seen:
            seen.add(p)
            stack += kids.get(p, [])
    return seen


def cmdline(pid: int) -> str:
    """A process's command line as one string ('' once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def simulated_cluster(monkeypatch):
    """A simulated Ray cluster on this machine, joined by this process: a head with no CPUs
    and two 1-CPU nodes. A generator for a fixture to ``yield from``; yields
    ``(cluster, nodes)`` and shuts everything down after."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    try:
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
