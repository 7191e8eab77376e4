"""Data-parallel training: DDP gradient equivalence, Ray Train runs, failures and node loss.

The first tests need no Ray: two gloo processes on localhost check that the engine's sharding,
``MaxUpLoss`` and a DDP-wrapped model reproduce the single-process gradient exactly. The rest
start their own Ray (``start_local_ray`` or a ``ray.cluster_utils.Cluster``) and stop it again;
they never touch another Ray on the host (no ``ray stop``; a worker is killed by the pid of a
process under this test's own raylet).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from proc_helpers import cmdline, descendants, free_port, simulated_cluster

from maxup import records
from maxup.config import from_dict, to_dict

ROOT = Path(__file__).resolve().parent.parent
GLOBAL_BATCH, M, SEED = 32, 4, 7


# --------------------------------------------------------------------------- no Ray: DDP maths

class PreDrawn:
    """A deterministic "augmentation": call k adds the k-th pre-drawn noise tensor.

    ``MaxUpLoss.draw_copies`` calls the augmentation m times per step, so copy k of every
    example is ``x + noise[k]`` — identical by construction in every process that holds the
    same rows of ``noise``.

    Args:
        noise: (m, B, C, H, W) noise for the B examples this process sees.
        num_classes: K for the one-hot targets.
    """

    def __init__(self, noise: torch.Tensor, num_classes: int):
        self.noise, self.num_classes, self.calls = noise, num_classes, 0

    def __call__(self, x, y, generator):
        k = self.calls % self.noise.shape[0]
        self.calls += 1
        return x + self.noise[k], torch.nn.functional.one_hot(y, self.num_classes).to(x.dtype)


def _shard_batches(world: int):
    """First batch of each rank's shard (the engine's ``Batches``) of the digits train set."""
    from maxup.data import build_dataset
    from maxup.engine import Batches

    ds = build_dataset("digits", split="train", train_transform="none", root=None,
                       download=False)
    out = []
    for rank in range(world):
        batches = Batches(ds, GLOBAL_BATCH // world, seed=SEED, rank=rank, world=world,
                           num_workers=0)
        x, y = next(iter(batches))
        out.append((x.double(), y))
    return out


def _model(name: str) -> torch.nn.Module:
    from maxup.models import build_model

    torch.manual_seed(0)
    return build_model(name, num_classes=10, in_channels=1, mean=(0.3,), std=(0.4,),
                       image_size=(8, 8)).double()


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in getattr(model, "module", model).parameters()]


def _step_grads(model, x, y, noise, mode: str) -> list[torch.Tensor]:
    from maxup.objective import MaxUpLoss

    model.zero_grad(set_to_none=True)
    objective = MaxUpLoss(PreDrawn(noise, 10), M, 10, mode=mode)
    objective(model, x, y, torch.Generator().manual_seed(0)).loss.backward()
    return _grads(model)


def _noise(world: int) -> torch.Tensor:
    """(M, world, B/world, 1, 8, 8) noise: rank r's copies are ``noise[:, r]``."""
    g = torch.Generator().manual_seed(123)
    return 0.3 * torch.randn(M, world, GLOBAL_BATCH // world, 1, 8, 8, generator=g,
                             dtype=torch.float64)


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as tdist

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                             world_size=world)
    try:
        x, y = _shard_batches(world)[rank]
        noise = _noise(world)[:, rank]
        result = {}
        for name in ("mlp", "small_cnn"):
            for mode in ("efficient", "naive"):
                ddp = torch.nn.parallel.DistributedDataParallel(_model(name))
                result[f"{name}/{mode}"] = _step_grads(ddp, x, y, noise, mode)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        tdist.barrier()  # see _nan_worker: no rank tears gloo down under its peer
    finally:
        tdist.destroy_process_group()


def test_ddp_gradient_equals_single_process_gradient(tmp_path):
    """Two gloo ranks (engine sharding, MaxUpLoss, DDP) give the single-process gradient.

    Each rank takes its first batch from the engine's ``Batches`` (its half of the global
    batch) and draws its m copies from pre-drawn noise rows, so the copies are the ones the
    single-process reference draws for the concatenated batch. DDP averages the two ranks'
    gradients of their mean worst-copy losses; with equal halves that is exactly the gradient
    of the mean over the whole batch — checked in float64 for ``mlp`` (no BatchNorm), in both
    efficient and naive modes.

    With BatchNorm (``small_cnn``) the DDP gradient is NOT the single-process one: each rank
    normalises (and, in the efficient selection pass, judges copies) with its own shard's
    batch statistics, not the global batch's (no SyncBatchNorm), so the two differ; what DDP
    does give is the average of the two per-rank gradients computed separately.
    """
    import torch.multiprocessing as mp

    world = 2
    mp.spawn(_ddp_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    shards = _shard_batches(world)
    x = torch.cat([s[0] for s in shards])
    y = torch.cat([s[1] for s in shards])
    noise = _noise(world)
    full_noise = noise.reshape(M, GLOBAL_BATCH, 1, 8, 8)  # rank 0's rows, then rank 1's
    for name in ("mlp", "small_cnn"):
        for mode in ("efficient", "naive"):
            key = f"{name}/{mode}"
            # DDP leaves every rank with the same averaged gradient.
            for a, b in zip(ranks[0][key], ranks[1][key]):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
            reference = _step_grads(_model(name), x, y, full_noise, mode)
            per_rank = [_step_grads(_model(name), *shards[r], noise[:, r], mode)
                        for r in range(world)]
            mean_of_ranks = [(a + b) / 2 for a, b in zip(*per_rank)]
            for got, want in zip(ranks[0][key], mean_of_ranks):
                torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
            same = all(torch.allclose(g, r, rtol=1e-9, atol=1e-12)
                       for g, r in zip(ranks[0][key], reference))
            if name == "mlp":
                assert same, f"{key}: DDP gradient differs from the single-process gradient"
            else:
                assert not same, f"{key}: per-rank BN statistics should change the gradient"


def test_shards_partition_the_epoch():
    """``Batches`` ranks hold disjoint, equal-sized shards of one shared permutation."""
    from maxup.engine import Batches

    class DS:
        images = torch.arange(101).float()
        labels = torch.arange(101)

        def __len__(self):
            return 101

    shards = [Batches(DS(), 10, seed=3, rank=r, world=2, num_workers=0).indices
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 50
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


# --------------------------------------------------------------------------- ScalingConfig

class _FakeTrainer:
    """Stands in for ``TorchTrainer``: records its arguments; ``fit`` writes a record."""

    made: list[_FakeTrainer] = []

    def __init__(self, loop, *, train_loop_config, torch_config, scaling_config, run_config):
        self.loop_config, self.torch_config = train_loop_config, torch_config
        self.scaling, self.run = scaling_config, run_config
        _FakeTrainer.made.append(self)

    def fit(self):
        self.env_at_fit = dict(os.environ)
        cfg = self.loop_config["config"]
        records.write_record(self.loop_config["record_path"], records.build_record(
            config=cfg, history=[], status="completed", timings={}, env=records.environment()))


@pytest.fixture
def fake_trainer(monkeypatch):
    import ray
    import ray.train.torch

    _FakeTrainer.made = []
    monkeypatch.setattr(ray.train.torch, "TorchTrainer", _FakeTrainer)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    return _FakeTrainer


def _cfg(**train) -> dict:
    return to_dict(from_dict({"model": {"name": "mlp"}, "data": {"name": "digits"},
                              "maxup": {"m": 2},
                              "train": {"epochs": 2, "batch_size": 64, "device": "cpu",
                                        "progress": False, "workers": 2, **train}}))


def test_scaling_config_fixed_by_default(fake_trainer, tmp_path):
    from maxup.platform.distributed import MAX_FAILURES, train_distributed

    train_distributed(_cfg(), tmp_path)
    t = fake_trainer.made[0]
    assert t.scaling.num_workers == 2
    assert t.scaling.use_gpu is False
    assert t.scaling.resources_per_worker == {"CPU": 1.0}
    assert t.torch_config.backend == "gloo"
    assert t.run.failure_config.max_failures == MAX_FAILURES
    assert Path(t.run.storage_path) == tmp_path.resolve()


def test_scaling_config_elastic_with_min_workers(fake_trainer, tmp_path):
    from maxup.platform.distributed import train_distributed

    train_distributed(_cfg(workers=2, min_workers=1), tmp_path)
    assert tuple(fake_trainer.made[0].scaling.num_workers) == (1, 2)


def test_regression_start_timeout_reaches_train_when_ray_already_running(fake_trainer,
                                                                         tmp_path):
    """``train.start_timeout_s`` used to reach Ray Train only when this module started Ray.

    Train v2 reads ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` from the driver's environment at
    ``fit()``; on a joined cluster, in a Tune trial or in a second run of the same process the
    configured value was ignored (60 s default or the first run's value). It is now set
    around ``fit()`` and restored afterwards.
    """
    from maxup.platform.distributed import train_distributed

    before = os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S")
    train_distributed(_cfg(min_workers=1, start_timeout_s=7.5), tmp_path)
    env = fake_trainer.made[0].env_at_fit
    assert env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] == "7.5"
    assert "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" in env
    assert os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S") == before


# --------------------------------------------------------------------------- Ray helpers


def _own_train_workers() -> list[int]:
    """Pids of ``RayTrainWorker`` actors under this process's own Ray (never another's)."""
    import ray

    node = ray._private.worker._global_node
    roots = [i.process.pid for infos in node.all_processes.values() for i in infos]
    return sorted(p for p in descendants(roots) if cmdline(p).startswith("ray::RayTrainWorker"))


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _committed_checkpoints(out_dir: Path) -> int:
    """Epoch of the latest checkpoint the Train controller has committed (0: none)."""
    snap = out_dir / "ray_train" / "checkpoint_manager_snapshot.json"
    try:
        data = json.loads(snap.read_text())
    except (OSError, ValueError):
        return 0
    latest = data.get("latest_checkpoint_result") or {}
    return int((latest.get("metrics") or {}).get("epoch") or 0)


def _assert_complete(rec: dict, epochs: int, workers: int | None = 2) -> None:
    assert rec["status"] == "completed"
    assert [h["epoch"] for h in rec["history"]] == list(range(1, epochs + 1))
    if workers is not None:
        assert rec["environment"]["workers"] == workers


@pytest.fixture
def local_ray():
    import ray

    from maxup.platform.distributed import start_local_ray

    if ray.is_initialized():
        ray.shutdown()
    start_local_ray(30.0)
    yield ray
    ray.shutdown()


def _run_in_thread(fn, *args, **kwargs):
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


# --------------------------------------------------------------------------- Ray Train runs

DIGITS = {"seed": 0, "model": {"name": "mlp"}, "data": {"name": "digits"},
          "augment": {"ops": ["gaussian"], "sigma": 0.1}, "maxup": {"m": 2},
          "optim": {"lr": 0.05, "schedule": "constant", "weight_decay": 0.0},
          "train": {"epochs": 4, "batch_size": 64, "device": "cpu", "progress": False}}

# Slow enough per epoch (m = 8 selection on a CNN) to kill a worker mid-run reliably.
SLOW = {"seed": 0, "model": {"name": "small_cnn"}, "data": {"name": "synthetic"},
        "augment": {"ops": ["gaussian"], "sigma": 0.1}, "maxup": {"m": 8},
        "optim": {"lr": 0.05, "schedule": "constant"},
        "train": {"epochs": 8, "batch_size": 32, "device": "cpu", "progress": False,
                  "workers": 2}}


@pytest.mark.ray
@pytest.mark.slow
def test_cli_train_with_two_workers_matches_one_worker_accuracy(tmp_path):
    """`maxup train --workers 2` (its own embedded Ray, as a user runs it): 2 Ray Train
    workers reach 1 worker's test accuracy within 4 points on digits.

    Same data, model, global batch (64) and learning rate; what differs is the augmentation
    noise (per-rank seeds) and the order of examples within a step, so the runs are not
    identical but are the same optimisation problem: after 4 epochs both sit in the low 90s
    and differ by ~1 point; 4 points (≈ 22 of 540 test images) leaves room for seed noise
    while catching a broken reduction (an unsynchronised or half-data run lands far lower).
    One Ray Train run serves the CLI wiring and the accuracy check (each costs ~40 s of CPU).
    """
    from maxup.engine import train

    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(DIGITS))
    out = tmp_path / "two"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "maxup", "train", str(config), "--workers",
                           "2", "--out", str(out)], capture_output=True, text=True, timeout=240,
                          cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "done: test acc" in proc.stdout
    two = records.read_record(out / "record.json")
    _assert_complete(two, 4)
    # What the command printed per epoch is the stored record's history.
    printed = [float(a) for a in re.findall(r"^epoch .*test loss \S+ acc ([\d.]+)%",
                                            proc.stdout, re.M)]
    assert printed == [round(h["test_acc"], 2) for h in two["history"]], proc.stdout[-2000:]
    one = train(DIGITS, tmp_path / "one", log=None)
    assert one["final"]["test_acc"] > 85.0
    assert abs(two["final"]["test_acc"] - one["final"]["test_acc"]) <= 4.0, (
        one["final"]["test_acc"], two["final"]["test_acc"])
    # Train metrics are all-reduced over both shards: every training image counted once.
    per_epoch = two["history"][0]
    assert sum(per_epoch["maxup_wins"]) == (1257 // 2) * 2


@pytest.mark.ray
@pytest.mark.slow
def test_worker_sigkill_mid_run_resumes_and_completes(local_ray, tmp_path):
    """SIGKILL a RayTrainWorker after the first committed checkpoint: FailureConfig restarts
    the group from the latest committed checkpoint and the record shows epochs 1..N once."""
    from maxup.platform.distributed import train_distributed

    out = tmp_path / "run"
    thread, box = _run_in_thread(train_distributed, SLOW, out)
    _wait_for(lambda: _committed_checkpoints(out) >= 1 or "error" in box, 180,
              "the first committed checkpoint")
    assert "error" not in box, box.get("error")
    victims = _own_train_workers()
    assert len(victims) == 2, victims
    done_before = len((records.read_record(out / "record.json") or {"history": []})["history"])
    os.kill(victims[-1], signal.SIGKILL)
    thread.join(240)
    assert not thread.is_alive(), "the run did not finish after the worker was killed"
    assert "error" not in box, box.get("error")
    assert done_before < SLOW["train"]["epochs"], "the kill landed after the last epoch"
    rec = box["value"]
    _assert_complete(rec, SLOW["train"]["epochs"])
    # What train_distributed returns is the stored record (also after a restart).
    assert records.read_record(out / "record.json")["history"] == rec["history"]
    assert "resumed from" in (out / "log.txt").read_text()


@pytest.fixture(scope="module")
def _simulated_cluster():
    """One simulated cluster for this module's node-loss tests: starting one (a head and two
    nodes, each with its own raylet and agents) costs more CPU than either test's training."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        yield from simulated_cluster(mp)


@pytest.fixture
def two_node_cluster(_simulated_cluster):
    """The shared cluster with exactly two live 1-CPU nodes: a test that lost one gets a new
    one before the next test starts."""
    import ray

    cluster, _ = _simulated_cluster
    if not ray.is_initialized():  # a test in between ran its own Ray (``local_ray``)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    nodes = list(cluster.worker_nodes)
    while len(nodes) < 2:
        nodes.append(cluster.add_node(num_cpus=1))
    cluster.wait_for_nodes()
    assert len(nodes) == 2, nodes
    return cluster, nodes


def _node_pids(node) -> set[int]:
    roots = [i.process.pid for infos in node.all_processes.values() for i in infos]
    return descendants(roots)


def _own_train_workers_on(nodes) -> list[bool]:
    """For each node: does it host a RayTrainWorker?"""
    return [any(cmdline(p).startswith("ray::RayTrainWorker") for p in _node_pids(n))
            for n in nodes]


def _run_then_lose_a_node(cluster, nodes, cfg: dict, out: Path):
    """Start a 2-worker run spread over both nodes; once a checkpoint has committed, crash
    the second node. Returns (thread, result box, epochs recorded before the crash)."""
    from maxup.platform.distributed import train_distributed

    thread, box = _run_in_thread(train_distributed, cfg, out)
    _wait_for(lambda: _committed_checkpoints(out) >= 1 or "error" in box, 180,
              "the first committed checkpoint")
    assert "error" not in box, box.get("error")
    assert all(_own_train_workers_on(nodes)), "each node should host one worker"
    done_before = len((records.read_record(out / "record.json") or {"history": []})["history"])
    cluster.remove_node(nodes[1], allow_graceful=False)
    return thread, box, done_before


@pytest.mark.ray
@pytest.mark.slow
def test_node_lost_mid_run_elastic_shrink_completes(two_node_cluster, tmp_path):
    """Two 1-CPU nodes (0-CPU head), a 2-worker run spread over both; one node crashes.

    With ``train.min_workers=1`` and ``train.start_timeout_s=10`` the group restarts with the
    one worker that still fits after the start timeout and finishes from the last committed
    checkpoint; the record holds every epoch exactly once (the shared ``out_dir`` is on this
    machine's disk, as a shared filesystem would be on a real cluster).
    """
    cluster, nodes = two_node_cluster
    cfg = json.loads(json.dumps(SLOW))
    cfg["train"].update(min_workers=1, start_timeout_s=10.0)
    out = tmp_path / "run"
    thread, box, done_before = _run_then_lose_a_node(cluster, nodes, cfg, out)
    thread.join(240)
    assert not thread.is_alive(), "the run did not finish after the node was removed"
    assert "error" not in box, box.get("error")
    assert done_before < cfg["train"]["epochs"]
    _assert_complete(box["value"], cfg["train"]["epochs"], workers=1)
    assert "resumed from" in (out / "log.txt").read_text()


@pytest.mark.ray
@pytest.mark.slow
def test_node_lost_mid_run_replaced_completes(two_node_cluster, tmp_path):
    """Fixed 2 workers over two 1-CPU nodes; one node crashes and a replacement joins.

    The fixed group cannot start on one node (it would retry forever); once the replacement
    node is added (from the main thread, as Ray requires) the group restarts on it and
    resumes from the last committed checkpoint; every epoch appears exactly once.
    """
    cluster, nodes = two_node_cluster
    out = tmp_path / "run"
    thread, box, done_before = _run_then_lose_a_node(cluster, nodes, SLOW, out)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    thread.join(240)
    assert not thread.is_alive(), "the run did not finish after the node was replaced"
    assert "error" not in box, box.get("error")
    assert done_before < SLOW["train"]["epochs"]
    _assert_complete(box["value"], SLOW["train"]["epochs"])
    assert "resumed from" in (out / "log.txt").read_text()


def test_regression_staged_checkpoints_do_not_pile_up(monkeypatch, tmp_path):
    """Each reported checkpoint is staged as a copy; the copies used to stay in the worker's
    temp dir until the run ended (one full checkpoint per epoch). Now at most one exists, and
    only while ``ray.train.report`` runs. ``_worker_loop`` runs here in-process, world size 1,
    with Ray Train's worker-side calls replaced."""
    import tempfile

    import ray.train
    import ray.train.torch

    from maxup.platform import distributed

    class Ctx:
        def get_world_rank(self):
            return 0

        def get_world_size(self):
            return 1

    staged_during_report = []

    def fake_report(metrics, checkpoint=None):
        staged = list(tmp_path.glob("maxup-rank0-*/maxup-ckpt-*"))
        staged_during_report.append(len(staged))
        if checkpoint is not None:
            assert (Path(checkpoint.path) / "last.pt").is_file()

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(ray.train, "get_context", lambda: Ctx())
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    monkeypatch.setattr(ray.train, "report", fake_report)
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cpu"))
    cfg = json.loads(json.dumps(DIGITS))
    cfg["train"]["epochs"] = 3
    out = tmp_path / "run"
    distributed._worker_loop({"config": cfg, "out_dir": str(out),
                              "record_path": str(out / "record.json"), "record_extra": None,
                              "threads": 1})
    assert staged_during_report == [1, 1, 1]
    assert not list(tmp_path.glob("maxup-rank0-*"))
    _assert_complete(records.read_record(out / "record.json"), 3, workers=1)


class _NaNOnRank1:
    """Wraps ``MaxUpLoss``: on rank 1 the loss of step ``at`` is NaN."""

    def __init__(self, objective, rank: int, at: int):
        self.objective, self.rank, self.at, self.calls = objective, rank, at, 0
        self.autocast = objective.autocast

    def __call__(self, *args, **kwargs):
        out = self.objective(*args, **kwargs)
        if self.rank == 1 and self.calls == self.at:
            out.loss = out.loss * float("nan")
        self.calls += 1
        return out


def _nan_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import datetime

    import torch.distributed as tdist

    from maxup.engine import DistContext, NonFiniteLoss, build_run, train_epoch

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                             world_size=world, timeout=datetime.timedelta(seconds=15))
    try:
        run = build_run(from_dict(DIGITS), torch.device("cpu"))
        run.objective = _NaNOnRank1(run.objective, rank, at=2)
        model = torch.nn.parallel.DistributedDataParallel(run.model)
        try:
            train_epoch(run, model, 0, DistContext(rank, world, torch.device("cpu")), False)
            result = "finished"
        except NonFiniteLoss as exc:
            result = f"NonFiniteLoss step {exc.step}"
        except Exception as exc:  # noqa: BLE001 - a collective timeout is the bug
            result = f"{type(exc).__name__}"
        Path(out_dir, f"rank{rank}.txt").write_text(result)
        # Both ranks are here before either tears gloo down: a rank that destroys the group
        # while its peer is still inside it can abort the peer ("terminate called ...").
        tdist.barrier()
    finally:
        tdist.destroy_process_group()


def test_regression_nonfinite_loss_on_one_rank_stops_all_ranks(tmp_path):
    """A NaN loss on one rank used to stop only that rank; the others then waited in DDP's
    gradient all-reduce until the collective timeout (30 min under Ray Train). Now the ranks
    agree on finiteness every step and all raise ``NonFiniteLoss`` at the same step."""
    import torch.multiprocessing as mp

    mp.spawn(_nan_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    got = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert got == ["NonFiniteLoss step 2"] * 2, got
