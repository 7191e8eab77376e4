"""Measure a device's forward and training-step times per model: a ``maxup.profile/1`` file.

``maxup calibrate`` calls :func:`calibrate`: for each (model, dataset shape, batch) a space
uses, one no-grad forward (train mode: BatchNorm on batch statistics, as MaxUp's selection
pass) and one SGD training step of a random batch, a warm-up round then the median of
``repeats`` rounds. A few seconds per model on a GPU; the step of a large model on a CPU takes
longer (``--repeats 1`` helps).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

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
    return cost.shape_key(model_name, shape), cost.Timing(batch, statistics.median(fwds),
                                                          statistics.median(steps))


def calibrate(needs: list[tuple[str, str, int]], device, *, repeats: int = 3,
              base: cost.Profile | None = None, source: str = "", overhead_s: float = 0.0,
              echo: Callable[[str], None] = print) -> cost.Profile:
    """Measure every need and return the device's profile (``base``'s other entries kept).

    Args:
        needs: (model, dataset, batch) triples (:func:`needs_of`).
        device: torch device to measure on.
        repeats: rounds per measurement.
        base: an existing profile of this device to update (None: a new one).
        source: the profile's statement of where its figures come from.
        overhead_s: per-trial fixed overhead to store (seconds).
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
    return prof
