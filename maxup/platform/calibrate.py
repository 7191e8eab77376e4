"""Measure a device's forward and training-step times per model: a ``maxup.profile/1`` file.

``maxup calibrate`` calls :func:`calibrate`: for each (model, dataset shape, batch) a space
uses, one no-grad forward (train mode: BatchNorm on batch statistics, as MaxUp's selection
pass) and one SGD training step of a random batch, a warm-up round then the median of
``repeats`` rounds. A few seconds per model on a GPU; the step of a large model on a CPU takes
longer (``--repeats 1`` helps).

``maxup calibrate --pack N`` also prices trials sharing one device (fractional
``gpus_per_trial``, issue 25): :func:`measure_packing` spawns N processes (spawned, as N Ray
trials are), each building the same model on the same device and warming up; then, meeting at
a barrier before each phase, one process runs training steps alone for ``seconds``, all N run
them at once for ``seconds``, and one runs alone again (the idle ones wait at the barrier) —
each step synchronised, as a trial's is. A process's rate is its steps ÷ its own wall time;
the throughput together is the sum of the N rates, and the **packing factor** is that ÷ the
mean of the two runs alone (bracketing a drift in the machine's speed). On a GPU the
processes are time-sliced (no MPS); on a CPU they share the cores with ``--threads`` torch
threads each, which is how the path is tested on a machine without a GPU (the planner uses
packing for fractional GPUs only).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from maxup.platform import cost


def needs_of(trials) -> list[tuple[str, str, int]]:
    """Distinct (model, dataset, per-worker batch) of a space's trials, in first-seen order."""
    out: dict[tuple[str, str, int], None] = {}
    for t in trials:
        c = t.config
        batch = max(1, c["train"]["batch_size"] // max(1, c["train"]["workers"]))
        out[(c["model"]["name"], c["data"]["name"], batch)] = None
    return list(out)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(model_name: str, dataset: str, batch: int, device
           ) -> tuple[str, Callable[[], None], Callable[[], None]]:
    """(profile key, no-grad forward, SGD training step) of a model on a random batch."""
    import torch

    from maxup.data import dataset_info
    from maxup.models import build_model

    info = dataset_info(dataset)
    shape = (info.in_channels, *info.image_size)
    model = build_model(model_name, num_classes=info.num_classes, in_channels=info.in_channels,
                        mean=info.mean, std=info.std, image_size=tuple(info.image_size))
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((batch, *shape), generator=g).to(device)
    y = torch.randint(0, info.num_classes, (batch,), generator=g).to(device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def fwd() -> None:
        with torch.no_grad():
            model(x)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return cost.shape_key(model_name, shape), fwd, step


def measure(model_name: str, dataset: str, batch: int, device, repeats: int = 3
            ) -> tuple[str, cost.Timing]:
    """(profile key, timing) of one model on random inputs of a dataset's shape.

    Args:
        model_name: a registered model.
        dataset: a registered image dataset (its shape, classes and normalisation).
        batch: images per step.
        device: torch device.
        repeats: measured rounds after one warm-up (median taken).
    """
    key, fwd, step = _setup(model_name, dataset, batch, device)

    def timed(fn: Callable[[], None]) -> float:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t0

    fwd(), step()  # warm-up: allocator, cuDNN autotuning, lazy init
    fwds, steps = [], []
    for _ in range(max(1, repeats)):
        fwds.append(timed(fwd))
        steps.append(timed(step))
    return key, cost.Timing(batch, statistics.median(fwds), statistics.median(steps))


# --------------------------------------------------------------------------- packing

#: Most processes ``--pack`` starts on one device.
MAX_PACK = 32


@dataclass
class PackRun:
    """One phase of a packed measurement: per running process, its id, training steps done
    and its own wall seconds."""

    pids: list[int]
    steps: list[int]
    seconds: list[float]

    @property
    def n(self) -> int:
        return len(self.pids)

    @property
    def rate(self) -> float:
        """Steps per second of the phase's processes together (Σ steps ÷ own seconds)."""
        return sum(k / t for k, t in zip(self.steps, self.seconds, strict=True))


@dataclass
class PackResult:
    """A packing measurement of one model: one process alone before and after, n together."""

    key: str
    batch: int
    alone: tuple[PackRun, PackRun]
    together: PackRun

    @property
    def alone_rate(self) -> float:
        """Steps/s of one process alone: the mean of the runs before and after the packed one
        (brackets a drift of the machine's speed)."""
        return (self.alone[0].rate + self.alone[1].rate) / 2

    @property
    def factor(self) -> float:
        return self.together.rate / self.alone_rate


def _pack_worker(index: int, model_name: str, dataset: str, batch: int, device: str,
                 threads: int, seconds: float, phases: list[int], barrier, queue) -> None:
    """One packed process: build and warm up, then per phase meet the others at the barrier
    and, if the phase runs ``index`` (phase k runs processes 0 .. phases[k]-1), run training
    steps for ``seconds``; the idle ones wait at the next barrier."""
    try:
        import torch

        torch.set_num_threads(threads)
        dev = torch.device(device)
        _key, _fwd, step = _setup(model_name, dataset, batch, dev)
        for _ in range(2):  # warm-up: allocator, cuDNN autotuning, lazy init
            step()
        _sync(dev)
        for k, active in enumerate(phases):
            barrier.wait(timeout=900)
            if index >= active:
                continue
            t0 = time.perf_counter()
            done = 0
            while True:
                step()
                _sync(dev)
                done += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= seconds:
                    break
            queue.put(("ok", k, os.getpid(), done, elapsed))
        barrier.wait(timeout=900)  # the last phase ends for all at once
    except BaseException as exc:  # reported to the parent as one line, then the others stop
        text = str(exc).strip().splitlines()
        queue.put(("error", -1, os.getpid(), f"{type(exc).__name__}: "
                   f"{text[0] if text else ''}"[:300], 0.0))
        barrier.abort()


def run_packed(model_name: str, dataset: str, batch: int, device: str, n: int,
               seconds: float, threads: int, phases: list[int], *,
               start_timeout: float = 900.0) -> list[PackRun]:
    """Spawn ``n`` processes on ``device`` (as ``n`` Ray trials are: spawned, not forked) and
    run the ``phases`` (processes running at once in each); one :class:`PackRun` per phase.

    Raises:
        ConfigError: a process failed (e.g. the n copies do not fit in device memory).
    """
    import multiprocessing as mp
    import queue as queue_mod

    from maxup.errors import ConfigError

    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_pack_worker, daemon=True,
                         args=(i, model_name, dataset, batch, device, threads, seconds,
                               phases, barrier, results)) for i in range(n)]
    for p in procs:
        p.start()
    want = sum(phases)
    got: list[tuple] = []
    limit = start_timeout + len(phases) * seconds
    deadline = time.monotonic() + limit
    try:
        while len(got) < want and not any(g[0] == "error" for g in got):
            try:
                got.append(results.get(timeout=1.0))
                continue
            except queue_mod.Empty:
                pass
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                why = (f"process {dead[0].pid} ended with exit code {dead[0].exitcode}" if dead
                       else f"not done within {limit:.0f} s")
                raise ConfigError("--pack", n, f"a number of {model_name} processes that run "
                                  f"on {device} together ({why})")
        time.sleep(0.5)  # the other processes' errors, if any, after the first
        while True:
            try:
                got.append(results.get_nowait())
            except queue_mod.Empty:
                break
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
    errors = [g[3] for g in got if g[0] == "error"]
    if errors:
        first = next((e for e in errors if not e.startswith("BrokenBarrierError")), errors[0])
        raise ConfigError("--pack", n, f"a number of {model_name} processes that fit on "
                          f"{device} together (a process failed: {first})")
    runs = []
    for k in range(len(phases)):
        rows = [g for g in got if g[1] == k]
        runs.append(PackRun([g[2] for g in rows], [g[3] for g in rows], [g[4] for g in rows]))
    return runs


def measure_packing(model_name: str, dataset: str, batch: int, device: str, n: int, *,
                    seconds: float = 10.0, threads: int = 1) -> PackResult:
    """The packing factor of ``n`` processes of one model on one device (module docstring):
    one process alone, the ``n`` together, one alone again, in the same ``n`` processes.

    Args:
        model_name: a registered model.
        dataset: a registered image dataset (its input shape).
        batch: images per step.
        device: ``"cuda"`` or ``"cpu"``.
        n: processes sharing the device (2 .. :data:`MAX_PACK`).
        seconds: measured window of each phase, after the warm-up.
        threads: torch threads per process.
    """
    from maxup.data import dataset_info

    info = dataset_info(dataset)
    key = cost.shape_key(model_name, (info.in_channels, *info.image_size))
    before, together, after = run_packed(model_name, dataset, batch, device, n, seconds,
                                         threads, [1, n, 1])
    return PackResult(key, batch, (before, after), together)


def store_packing(prof: cost.Profile, n: int, results: list[PackResult], source: str
                  ) -> cost.Packing:
    """Record measured factors in ``prof.packing[n]`` (other models' factors there kept).

    The device's factor is the smallest over the models measured at ``n`` (a conservative
    figure for models without their own).
    """
    old = prof.packing.get(n)
    models = dict(old.models) if old is not None else {}
    models.update({r.key: r.factor for r in results})
    entry = cost.Packing(min(models.values()), source, models)
    prof.packing[n] = entry
    return entry


def calibrate(needs: list[tuple[str, str, int]], device, *, repeats: int = 3,
              base: cost.Profile | None = None, source: str = "", overhead_s: float = 0.0,
              pack: int | None = None, pack_seconds: float = 10.0, threads: int = 1,
              pack_source: str = "", echo: Callable[[str], None] = print) -> cost.Profile:
    """Measure every need and return the device's profile (``base``'s other entries kept).

    Args:
        needs: (model, dataset, batch) triples (:func:`needs_of`).
        device: torch device to measure on.
        repeats: rounds per measurement.
        base: an existing profile of this device to update (None: a new one).
        source: the profile's statement of where its figures come from.
        overhead_s: per-trial fixed overhead to store (seconds).
        pack: also measure the packing factor of this many processes per need (None: not).
        pack_seconds: measured window of each packed run.
        threads: torch threads of each packed process.
        pack_source: the packing entry's statement of how it was measured.
        echo: where a line per measurement goes.
    """
    from maxup.records import now

    name, kind = (cost.local_device(want_gpu=True) if device.type == "cuda"
                  else (cost.cpu_name(), "cpu"))
    prof = base if base is not None else cost.Profile(name, kind, source, False)
    prof.device, prof.kind, prof.source, prof.estimate = name, kind, source, False
    prof.trial_overhead_s = overhead_s
    prof.created = now()
    for model_name, dataset, batch in needs:
        key, timing = measure(model_name, dataset, batch, device, repeats)
        prof.models[key] = timing
        echo(f"{key} batch {batch}: forward {timing.fwd_s * 1e3:.1f} ms, "
             f"step {timing.step_s * 1e3:.1f} ms")
    if pack:
        results = []
        for model_name, dataset, batch in needs:
            r = measure_packing(model_name, dataset, batch, device.type, pack,
                                seconds=pack_seconds, threads=threads)
            results.append(r)
            echo(f"{r.key} batch {batch}: {pack} processes together {r.together.rate:.2f} "
                 f"steps/s, one alone {r.alone_rate:.2f} steps/s: packing factor "
                 f"{r.factor:.2f} (each trial ×{pack / r.factor:.2f} its time alone)")
        store_packing(prof, pack, results, pack_source)
    return prof
