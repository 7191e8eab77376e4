"""Data-parallel training on Ray Train (v2): the same engine, run by every worker.

``train_distributed(config, out_dir)`` starts a ``TorchTrainer`` with ``train.workers``
workers (DDP over gloo on CPU, NCCL on GPU). Each worker runs :func:`maxup.engine.train`
with a :class:`~maxup.engine.DistContext`; the engine shards the training set by rank
(per-rank seeds differ), splits the global ``train.batch_size`` across workers, evaluates on
a shard per rank and all-reduces the sums, and lets only rank 0 write files. MaxUp's selection
stays per example and local to each worker: no extra communication.

Checkpoints go through ``ray.train.report(..., checkpoint=...)`` every
``train.checkpoint_every`` epochs and come back through ``ray.train.get_checkpoint()`` after a
worker or node failure (``FailureConfig(max_failures)``). A checkpoint only commits when the
controller polls, so a restarted group may resume from an older checkpoint than the last one
written; the history travels inside the checkpoint, so the record still shows each epoch
exactly once. The Train run has a fixed name inside ``out_dir``, so running the same command
again (or a restored Tune trial) resumes from the latest committed checkpoint.

Worker-group size: fixed ``train.workers`` by default — a fixed group trains exactly the
configured data-parallel layout, so results do not depend on what the cluster had free. Set
``train.min_workers`` for elastic sizing (min..workers): after ``train.start_timeout_s`` the
group starts with what is available instead of waiting forever for a lost node.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from maxup import records, store
from maxup.config import RunConfig, from_dict, to_dict
from maxup.errors import UsageError

RUN_NAME = store.RAY_TRAIN
MAX_FAILURES = 3


def _worker_loop(loop_config: dict) -> None:
    """Runs in every Ray Train worker: restore the latest checkpoint, then the engine."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from maxup.engine import DistContext, train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    # A Ray Train worker process belongs to this run: its thread setting is ours to choose
    # (the engine itself never changes thread settings).
    threads = max(1, int(loop_config.get("threads", 1)))
    torch.set_num_threads(threads)
    # What Ray actually granted this worker goes into the record (rank 0 writes it), so a
    # run's resources are auditable after the fact, not only what was asked for.
    runtime = ray.get_runtime_context()
    # Only a Ray worker process has granted resources (the loop also runs in-process in tests).
    granted = (runtime.get_assigned_resources()
               if runtime.worker.mode == ray._private.worker.WORKER_MODE else {})
    record_extra = dict(loop_config.get("record_extra") or {})
    record_extra["environment"] = {"worker_resources": granted, "torch_threads": threads}
    out_dir = Path(loop_config["out_dir"])
    local = Path(tempfile.mkdtemp(prefix=f"maxup-rank{rank}-"))
    checkpoint_in = None
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            checkpoint_in = local / "restored.pt"
            shutil.copyfile(Path(d) / store.CHECKPOINT, checkpoint_in)

    def report(metrics: dict, checkpoint_dir) -> None:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float | bool)}
        if checkpoint_dir is not None and rank == 0:
            # Report a copy: the Train checkpoint holds last.pt alone. The upload is
            # synchronous (the default), so the copy is removed once report returns; kept,
            # every epoch's copy piled up in the worker's temp dir until the run ended.
            stage = Path(tempfile.mkdtemp(prefix="maxup-ckpt-", dir=local))
            try:
                shutil.copyfile(Path(checkpoint_dir) / store.CHECKPOINT, stage / store.CHECKPOINT)
                ray.train.report(scalars, checkpoint=ray.train.Checkpoint.from_directory(stage))
            finally:
                shutil.rmtree(stage, ignore_errors=True)
        else:
            ray.train.report(scalars)

    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with open(store.TrialDir(out_dir).log, "a") if rank == 0 else open(os.devnull, "w") as fh:
            def log(line: str) -> None:
                fh.write(line + "\n")
                fh.flush()

            train(loop_config["config"], out_dir, reporter=report,
                  resume=checkpoint_in is not None,
                  dist=DistContext(rank=rank, world_size=world, device=device),
                  record_path=loop_config.get("record_path"),
                  record_extra=record_extra, checkpoint_in=checkpoint_in,
                  log=log)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def train_distributed(config: dict | RunConfig, out_dir: str | Path, *, resume: bool = True,
                      record_path: str | Path | None = None, record_extra: dict | None = None,
                      reporter=None, cpus_per_worker: float = 1.0) -> dict:
    """Train one run data-parallel on Ray Train and return its record.

    Args:
        config: run config with ``train.workers > 1``.
        out_dir: run directory (must be shared by all nodes on a multi-node cluster).
        resume: continue from the Train run's latest committed checkpoint, if any.
        record_path, record_extra: as in :func:`maxup.engine.train`.
        reporter: forwarded per-epoch metrics (a Tune trial passes ``tune.report``).
        cpus_per_worker: CPUs each worker holds (its Ray resource request and its torch
            intra-op threads, at least 1).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = config if isinstance(config, RunConfig) else from_dict(config)
    out_dir = Path(out_dir).resolve()
    record_path = Path(record_path).resolve() if record_path else store.TrialDir(out_dir).record
    storage = out_dir / RUN_NAME
    if not resume and storage.exists():
        shutil.rmtree(storage)
    if not ray.is_initialized():
        start_local_ray(cfg.train.start_timeout_s)
    use_gpu = cfg.train.device == "cuda" or (cfg.train.device == "auto" and
                                             ray.cluster_resources().get("GPU", 0) > 0)
    workers = cfg.train.workers
    num_workers = workers if cfg.train.min_workers is None else (cfg.train.min_workers, workers)
    callbacks = []
    if reporter is not None:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": to_dict(cfg), "out_dir": str(out_dir),
                           "record_path": str(record_path), "record_extra": record_extra,
                           "threads": cpus_per_worker},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=TrainRunConfig(
            name=RUN_NAME, storage_path=str(out_dir),
            failure_config=FailureConfig(max_failures=MAX_FAILURES),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )
    with _train_env(cfg.train.start_timeout_s):
        _fit(trainer)
    rec = records.read_record(record_path)
    if rec is None:
        raise RuntimeError(f"the Ray Train run finished without writing {record_path}")
    return rec


def _fit(trainer) -> None:
    """``trainer.fit()``, off the main thread when called on it.

    On the main thread Ray Train's ``fit()`` replaces the process's SIGINT handler with its
    own (a "graceful abort" after which ``maxup train --workers 2`` exited 1 without a word,
    issue 27) and never restores it. In another thread it installs none: a Ctrl-C then stays
    a ``KeyboardInterrupt`` in the main thread, and the command tells its own story
    (:mod:`maxup.platform.interrupt`). The thread is a daemon: after a Ctrl-C, stopping Ray
    ends its wait."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        trainer.fit()
        return
    box: dict = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread below
            box["error"] = exc

    thread = threading.Thread(target=fit, name="maxup-ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.2)
    if "error" in box:
        raise box["error"]


@contextlib.contextmanager
def _train_env(start_timeout_s: float):
    """Set the Train v2 knobs in this (driver) process's environment while ``fit()`` runs.

    Train v2 reads them from the driver's ``os.environ`` when ``fit()`` starts the controller
    and passes them on to the controller and workers, so this works whoever started Ray (a
    joined cluster, a Tune trial, an earlier run with another timeout); the previous values
    are restored afterwards.
    """
    env = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(start_timeout_s),
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get(
               "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ensure_local_token() -> Path | None:
    """Make sure Ray finds an authentication token; a token file created here is 0600.

    Ray looks for ``RAY_AUTH_TOKEN``, then the file at ``RAY_AUTH_TOKEN_PATH``, then
    ``~/.ray/auth_token``; when none exists, Ray 2.60 writes ``~/.ray/auth_token`` with the
    umask's permissions (0644: any local user could read it). This writes it first, readable
    by its owner only (``~/.ray`` created 0700). Returns the file created, or None.
    """
    from maxup.platform.jobs import read_token

    try:
        if read_token():
            return None
    except UsageError:
        return None  # RAY_AUTH_TOKEN_PATH names an unreadable file: Ray's own error says so
    from ray._private.authentication.authentication_token_generator import (
        generate_new_authentication_token,
    )

    path = Path.home() / ".ray" / "auth_token"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # an empty file, or another process was first
        return None
    with os.fdopen(fd, "w") as fh:
        fh.write(generate_new_authentication_token())
    try:  # Ray may have cached "no token" already
        from ray._raylet import AuthenticationTokenLoader

        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass
    return path


def _force_token_auth() -> None:
    """Token authentication for this process and the Ray it starts, whatever
    ``RAY_AUTH_MODE`` said (``disabled`` would leave the control store open to anyone on the
    network). Setting the mode explicitly also silences Ray's banner that suggests
    ``RAY_AUTH_MODE=disabled``."""
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # refresh Ray's cached config, which may have read the old mode at import
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):
        pass


def start_local_ray(start_timeout_s: float = 60.0) -> None:
    """Start an embedded, private local Ray: token authentication forced on, no dashboard.

    ``address="local"`` always starts a new instance: a plain ``ray.init()`` would instead
    join whatever ``RAY_ADDRESS`` or the host's last ``ray start`` cluster names. Token
    authentication is on whatever ``RAY_AUTH_MODE`` says, and a token file created for it is
    0600 (:func:`ensure_local_token`). Ray's GCS, raylet and workers still listen on all
    interfaces (Ray 2.60 offers no loopback-only mode; ``_node_ip_address="127.0.0.1"`` is
    rewritten to the node's IP); the token is what guards them. Ray's usage-stats reporting
    (on unless disabled explicitly) is turned off unless ``RAY_USAGE_STATS_ENABLED`` says
    otherwise.

    Every process of this Ray dies with the driver. Ray's own ``PR_SET_PDEATHSIG`` covers only
    the driver's direct children (GCS, raylet, monitors): after a driver SIGKILL, trial workers
    trained on and wrote records for up to 3 s and Ray's dashboard and runtime-env agents
    stayed for good. A watchdog started before ``ray.init`` (:mod:`maxup.platform.reaper`,
    Linux) kills all of the driver's descendants when it dies: all were gone within 0.16 s of
    the kill (5 runs). At a normal exit it shuts Ray down, then kills what outlived the
    shutdown (Ray's agents did, after a Ctrl-C) and leaves.
    """
    import ray

    from maxup.platform import reaper

    _force_token_auth()
    ensure_local_token()
    reaper.start(at_exit=ray.shutdown)  # before ray.init, which starts what it guards

    env = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(start_timeout_s),
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get(
               "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")}
    os.environ.update(env)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from maxup.platform import interrupt

    try:
        with interrupt.deferred():  # a Ctrl-C now waits until Ray is whole, then stops it
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                     log_to_driver=False, logging_level="WARNING",
                     runtime_env={"env_vars": env})
    except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception when its node
        # does not register within its fixed 30 s (seen with three Ray test files at once
        # on two cores); a 30-line traceback said no more than this line does.
        from maxup.errors import StartError

        with contextlib.suppress(Exception):
            ray.shutdown()  # stop whatever part of it did start
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StartError(f"the embedded local Ray did not start ({reason}); if the machine "
                         "is busy, run the same command again: finished work is kept") from exc


def probe_cluster(address: str, timeout_s: float = 10.0) -> str:
    """Check that a Ray cluster answers at ``address`` before anything is written or started.

    ``auto`` is resolved as Ray resolves it (``RAY_ADDRESS``, then the host's last
    ``ray start``); the GCS port must accept a TCP connection within ``timeout_s``. Without
    this, ``auto`` with no cluster was a 29-line ``ConnectionError`` and an unreachable
    ``HOST:PORT`` waited forever.

    Args:
        address: ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``.
        timeout_s: the longest wait for the connection.

    Returns:
        the resolved ``HOST:PORT``.

    Raises:
        UsageError: no cluster found, a malformed address, or no answer in time.
    """
    import socket

    resolved = address
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            resolved = canonicalize_bootstrap_address(address)
        except Exception:  # noqa: BLE001 - Ray's own resolution failed: no cluster
            resolved = None
        if not resolved:
            raise UsageError("address 'auto': no running Ray cluster found (RAY_ADDRESS unset "
                             "and no 'ray start' on this host); allowed: a running cluster's "
                             "HOST:PORT, or no address for an embedded local Ray")
    hostport = resolved.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"address {address!r}: not HOST:PORT; allowed: auto or HOST:PORT of "
                         "a running Ray cluster (e.g. 10.0.0.5:6379)")
    def unreachable(why: str) -> UsageError:
        return UsageError(f"address {address!r}: no Ray cluster answers at {hostport} ({why} "
                          f"within {timeout_s:g} s); allowed: the address of a running "
                          "cluster ('ray status' on its head prints it)")

    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise unreachable(why) from None
    # A TCP accept is not a GCS (a proxy or another service accepts too): one GCS call must
    # be answered, as a GCS answers it (OK, or UNAUTHENTICATED: the token is checked later).
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    def gcs_call(metadata=None) -> grpc.StatusCode:
        with grpc.insecure_channel(hostport) as channel:
            stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
            try:
                stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(),
                                    timeout=timeout_s, metadata=metadata)
            except grpc.RpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    code = gcs_call()
    if code not in (grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED):
        raise unreachable(f"not a Ray GCS: {code.name}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        _check_token(address, hostport, gcs_call)
    return hostport


def live_nodes(address: str, timeout_s: float = 5.0) -> tuple[str, list[dict]]:
    """The alive nodes of the Ray cluster at ``address``, read from its GCS and nothing else:
    no driver joins, no job is registered, nothing starts (what a dry run may do).

    Args:
        address: ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``.
        timeout_s: the longest wait for each GCS call.

    Returns:
        ``(HOST:PORT, nodes)``; each node ``{"address", "head", "instance_type",
        "resources"}``, ``resources`` Ray's totals (``CPU``, ``GPU``,
        ``accelerator_type:NAME`` …).

    Raises:
        UsageError: as :func:`probe_cluster` (no answer, not a GCS, token missing or wrong).
    """
    import grpc
    from ray.core.generated import gcs_pb2, gcs_service_pb2, gcs_service_pb2_grpc

    from maxup.platform.jobs import read_token

    hostport = probe_cluster(address, timeout_s)
    token = read_token()
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(hostport) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            reply = stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(),
                                        timeout=timeout_s, metadata=metadata)
        except grpc.RpcError as exc:
            raise UsageError(f"address {address!r}: the cluster at {hostport} did not list "
                             f"its nodes ({exc.code().name})") from None
    alive = gcs_pb2.GcsNodeInfo.GcsNodeState.Value("ALIVE")
    return hostport, [{"address": n.node_manager_address, "head": n.is_head_node,
                       "instance_type": n.instance_type_name or None,
                       "resources": dict(n.resources_total)}
                      for n in reply.node_info_list if n.state == alive]


def _check_token(address: str, hostport: str, gcs_call) -> None:
    """The cluster wants its token: refuse in one line when none is set here, or when the one
    set is not the cluster's (joining without it was 20 s of ``InvalidAuthToken`` warnings and
    a 50-line traceback); with the right one, make sure this process sends it."""
    import grpc

    from maxup.platform.jobs import read_token

    allowed = ("allowed: RAY_AUTH_TOKEN (the token) or RAY_AUTH_TOKEN_PATH (a file holding "
               "it) set to the cluster's token, the head's ~/.ray/auth_token "
               "(docs/cluster.md)")
    try:
        token = read_token()
    except UsageError as exc:
        raise UsageError(f"address {address!r}: the cluster at {hostport} uses token "
                         f"authentication and {str(exc).split(': ', 1)[-1]}") from None
    if not token:
        raise UsageError(f"address {address!r}: the cluster at {hostport} uses token "
                         "authentication and no token is set here (RAY_AUTH_TOKEN, "
                         f"RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token); {allowed}")
    if gcs_call((("authorization", f"Bearer {token}"),)) == grpc.StatusCode.UNAUTHENTICATED:
        raise UsageError(f"address {address!r}: the cluster at {hostport} refused the token "
                         f"set here (not its token); {allowed}")
    _force_token_auth()  # this driver sends it when it joins
