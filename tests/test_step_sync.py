"""The image step without host synchronisation: batches in the same order wherever the data
lives, per-step values fetched in blocks yet the same numbers, a non-finite loss still failing
the run at its exact step."""

from __future__ import annotations

import math

import pytest
import torch
from test_engine import config as engine_config
from torch_helpers import with_sections

import maxup.engine.image as image
from maxup.config import from_dict
from maxup.data.tensor import TensorImageDataset
from maxup.engine import Batches, DistContext, build_run, train, train_epoch
from maxup.engine.batches import device_resident, eval_batches, tensor_backed
from maxup.platform.verify import TIMING_KEYS as TIMING


def cfg(**sections) -> dict:
    """test_engine's digits run with m = 3 from the first epoch, 2 epochs of 8 steps."""
    base = engine_config(maxup={"m": 3, "warmup_epochs": 0},
                         train={"epochs": 2, "batch_size": 32, "eval_batch_size": 100})
    return with_sections(base, sections)


def dataset(n: int = 23) -> TensorImageDataset:
    images = torch.arange(n * 4, dtype=torch.float32).view(n, 1, 2, 2)
    return TensorImageDataset(images, torch.arange(n) % 3)


# --------------------------------------------------------------------------- batch order

@pytest.mark.parametrize("world", [1, 2])
def test_batches_follow_the_seeded_permutation_rank_by_rank(world):
    ds = dataset()
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(7))  # independent
    per_rank = len(ds) // world
    for rank in range(world):
        want = perm[rank::world][:per_rank].tolist()
        got = [int(i) for x, _ in Batches(ds, 5, seed=7, rank=rank, world=world,
                                          num_workers=0) for i in x[:, 0, 0, 0] / 4]
        assert got == want
        assert [len(x) for x, _ in Batches(ds, 5, seed=7, rank=rank, world=world,
                                           num_workers=0)] == [5] * (per_rank // 5) + (
            [per_rank % 5] if per_rank % 5 else [])


def test_tensor_dataset_moved_keeps_values_labels_and_order():
    ds = dataset()
    moved = ds.to("cpu")
    assert moved is not ds and torch.equal(moved.images, ds.images)
    assert torch.equal(moved.labels, ds.labels) and moved.classes == ds.classes
    a = [(x.clone(), y.clone()) for x, y in Batches(ds, 4, seed=1, rank=0, world=1,
                                                   num_workers=0)]
    b = list(Batches(moved, 4, seed=1, rank=0, world=1, num_workers=0))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_device_resident_leaves_cpu_training_and_transformed_data_alone():
    ds = dataset()
    assert device_resident(ds, torch.device("cpu")) is ds

    class Transformed(TensorImageDataset):
        transform = staticmethod(lambda x: x)

    t = Transformed(ds.images, ds.labels)
    assert tensor_backed(ds) and not tensor_backed(t)
    assert device_resident(t, torch.device("cpu")) is t


def test_eval_batches_are_every_world_th_example_in_order():
    ds = dataset(11)
    got = torch.cat([y for _, y in eval_batches(ds, 3, rank=1, world=2)])
    assert got.tolist() == (torch.arange(1, 11, 2) % 3).tolist()


# --------------------------------------------------------------------------- host syncs

def test_regression_train_step_waits_for_the_device_only_once_per_block(monkeypatch):
    """Every step read its loss, accuracy and gap with float() — three waits for the GPU per
    step. Now the step never converts a tensor to a Python number; values come back in
    blocks of FINITE_CHECK_EVERY steps."""
    c = cfg(data={"name": "digits", "subset": 512}, train={"batch_size": 16})
    run = build_run(from_dict(c), torch.device("cpu"))
    conversions = {"float": 0, "item": 0, "tolist": 0}
    real = {name: getattr(torch.Tensor, attr) for name, attr in
            (("float", "__float__"), ("item", "item"), ("tolist", "tolist"))}

    def counting(name):
        def wrapper(self, *a, **k):
            conversions[name] += 1
            return real[name](self, *a, **k)
        return wrapper

    monkeypatch.setattr(image, "FINITE_CHECK_EVERY", 8)
    for name, attr in (("float", "__float__"), ("item", "item"), ("tolist", "tolist")):
        monkeypatch.setattr(torch.Tensor, attr, counting(name))
    metrics = train_epoch(run, run.model, 0, DistContext(), progress=False)
    steps = math.ceil(512 / 16)  # 32 steps, 4 blocks of 8
    assert conversions["item"] == 0
    # The epoch's end: correct count (float) and nothing per step.
    assert conversions["float"] <= 2, conversions
    # Per block: losses and gaps; at the end: wins.
    assert conversions["tolist"] <= 2 * (steps // 8) + 2, conversions
    assert metrics["maxup_m"] == 3 and sum(metrics["maxup_wins"]) == 512


def test_block_size_changes_no_number(monkeypatch, tmp_path):
    """The same run with values fetched every step and every 64 steps: identical records."""
    c = cfg()
    monkeypatch.setattr(image, "FINITE_CHECK_EVERY", 1)
    a = train(c, tmp_path / "a", log=None)
    monkeypatch.setattr(image, "FINITE_CHECK_EVERY", 64)
    b = train(c, tmp_path / "b", log=None)
    strip = [{k: v for k, v in h.items() if k not in TIMING} for h in a["history"]]
    assert strip == [{k: v for k, v in h.items() if k not in TIMING} for h in b["history"]]


def test_train_loss_is_the_example_weighted_mean_of_step_losses(monkeypatch):
    """train_loss and maxup_gap from the block-fetched values against the same per-step
    numbers collected independently (a spy on the objective's outputs)."""
    c = cfg(data={"name": "digits", "subset": 200}, train={"batch_size": 64})
    run = build_run(from_dict(c), torch.device("cpu"))
    seen = []
    real = run.objective.__call__

    class Spy:
        def __getattr__(self, name):
            return getattr(run.objective, name)

        def __call__(self, model, x, y, gen, m=None):
            out = real(model, x, y, gen, m=m)
            seen.append((float(out.loss), float(out.gap), x.shape[0]))
            return out

    run.objective = Spy()
    metrics = train_epoch(run, run.model, 0, DistContext(), progress=False)
    assert [b for *_, b in seen] == [64, 64, 64, 8]
    n = sum(b for *_, b in seen)
    assert metrics["train_loss"] == pytest.approx(sum(v * b for v, _, b in seen) / n, rel=1e-12)
    assert metrics["maxup_gap"] == pytest.approx(sum(g * b for _, g, b in seen) / n, rel=1e-12)


@pytest.mark.parametrize("block", [1, 3, 64])
def test_non_finite_loss_fails_at_its_exact_step_whatever_the_block(monkeypatch, tmp_path,
                                                                    block):
    """A NaN planted at step 5 of epoch 2 is reported as epoch 2, step 5, however many steps
    the loop fetches at once."""
    monkeypatch.setattr(image, "FINITE_CHECK_EVERY", block)
    calls = {"n": 0}
    real = image.MaxUpLoss.__call__

    def planted(self, model, x, y, gen, m=None):
        out = real(self, model, x, y, gen, m=m)
        calls["n"] += 1
        if calls["n"] == 8 + 6:  # epoch 1 has 256 / 32 = 8 steps; then steps 0..5
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(image.MaxUpLoss, "__call__", planted)
    record = train(cfg(), tmp_path / "r", log=None)
    assert record["status"] == "failed"
    assert record["failure"]["epoch"] == 2 and record["failure"]["step"] == 5
    assert record["failure"]["value"] == "nan"
    assert len(record["history"]) == 1
