"""The optimiser as the engine actually runs it, and the metrics it reports beyond top-1.

Checked against values computed here, never against the code under test: each SGD step of
an image run is replayed with a plain reference SGD (torch's documented update rule written
out: weight decay, momentum buffer, Nesterov) at the schedule's learning rate computed by
hand; the checkpointed optimiser of a ``train()`` run is compared with the config; and the
clean loss, top-1 and top-5 of a fixed model are counted image by image in a Python loop.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from maxup.config import from_dict
from maxup.data import build_dataset
from maxup.engine import DistContext, build_run, build_task, load_checkpoint, train, train_epoch

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors, a busy machine


def image_config(**optim) -> dict:
    """digits, 64 images in one batch of 64: one SGD step per epoch."""
    return {
        "seed": 3,
        "model": {"name": "small_cnn"},
        "data": {"name": "digits", "subset": 64},
        "augment": {"ops": ["gaussian"], "sigma": 0.25},
        "maxup": {"m": 1, "warmup_epochs": 0},
        "optim": {"lr": 0.08, "momentum": 0.5, "nesterov": True, "weight_decay": 0.01,
                  "schedule": "multistep", "milestones": [1, 2], "gamma": 0.5, **optim},
        "train": {"epochs": 3, "batch_size": 64, "eval_batch_size": 540, "device": "cpu",
                  "progress": False},
    }


class _Recorder:
    """Wraps the run's augmentation: keeps the model's weights as the step finds them and the
    augmented batch the step trains on (m = 1: one call per step)."""

    def __init__(self, run):
        self.run, self.inner = run, run.objective.augmentation
        self.calls: list[tuple[dict, torch.Tensor, torch.Tensor]] = []

    def __call__(self, x, y, generator):
        xa, ta = self.inner(x, y, generator)
        before = copy.deepcopy(self.run.model.state_dict())
        self.calls.append((before, xa.detach().clone(), ta.detach().clone()))
        return xa, ta


def _reference_gradients(run, state: dict, xa: torch.Tensor, ta: torch.Tensor) -> list:
    """d/dw of the mean soft cross-entropy at ``state`` (training mode: batch statistics)."""
    model = copy.deepcopy(run.model)
    model.load_state_dict(state)
    model.train()
    logits = model(xa)
    loss = -(ta * torch.log_softmax(logits.double(), dim=1)).sum(1).mean()
    return list(torch.autograd.grad(loss, list(model.parameters())))


@pytest.mark.parametrize("nesterov", [True, False])
def test_each_step_is_sgd_at_the_scheduled_lr_with_every_configured_option(nesterov):
    """Three epochs of one step each; the weights after each step are the reference SGD's
    (lr 0.08, 0.04, 0.02 by hand: ×0.5 at milestones 1 and 2; momentum 0.5; weight decay
    0.01; Nesterov as configured; dampening 0) from the weights the step started at."""
    cfg = from_dict(image_config(nesterov=nesterov))
    run = build_run(cfg, CPU)
    rec = _Recorder(run)
    run.objective.augmentation = rec
    lrs, momentum, wd = [0.08, 0.04, 0.02], 0.5, 0.01
    buffers: list[torch.Tensor] | None = None
    for epoch in range(3):
        metrics = train_epoch(run, run.model, epoch, DistContext(), False)
        assert metrics["lr"] == pytest.approx(lrs[epoch], rel=1e-15)
        assert len(rec.calls) == epoch + 1
        before, xa, ta = rec.calls[-1]
        names = [n for n, _ in run.model.named_parameters()]
        grads = _reference_gradients(run, before, xa, ta)
        new_buffers = []
        for i, (name, g) in enumerate(zip(names, grads, strict=True)):
            w = before[name].double()
            d = g + wd * w
            buf = d if buffers is None else momentum * buffers[i] + d
            new_buffers.append(buf)
            step = d + momentum * buf if nesterov else buf
            expected = w - lrs[epoch] * step
            got = dict(run.model.named_parameters())[name].detach().double()
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6,
                                       msg=f"epoch {epoch}, {name}")
        buffers = new_buffers


def test_checkpointed_optimiser_holds_the_epochs_lr_and_the_configs_options(tmp_path):
    """Through ``train()``: after each epoch the checkpoint's optimiser state has that epoch's
    scheduled lr (cosine over 3 epochs, by hand) and the configured momentum, Nesterov and
    weight decay, in every parameter group."""
    cfg = image_config(schedule="cosine", lr=0.1, momentum=0.7, weight_decay=0.003,
                       nesterov=True)
    seen = []

    def reporter(metrics, checkpoint_dir):
        state = load_checkpoint(checkpoint_dir / "last.pt")
        seen.append((metrics["lr"], state["optimizer"]["param_groups"]))

    train(cfg, tmp_path / "r", log=None, reporter=reporter)
    expected = [0.1, 0.05 * (1 + math.cos(math.pi / 3)), 0.05 * (1 + math.cos(2 * math.pi / 3))]
    assert [lr for lr, _ in seen] == pytest.approx(expected, rel=1e-12)
    for (_, groups), lr in zip(seen, expected, strict=True):
        assert groups
        for g in groups:
            assert g["lr"] == pytest.approx(lr, rel=1e-12)
            assert (g["momentum"], g["nesterov"], g["weight_decay"], g["dampening"]) == (
                0.7, True, 0.003, 0)


# --------------------------------------------------------------------------- top-k

class _FixedLinear(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.w = nn.Parameter(torch.randn(64, 10, generator=g))
        self.b = nn.Parameter(torch.randn(10, generator=g))

    def forward(self, x):
        return x.flatten(1) @ self.w + self.b


def test_loss_top1_and_top5_of_a_fixed_model_counted_by_hand():
    """The clean test metrics of a fixed linear model on digits' 540 test images, evaluated in
    batches of 128 (the last one partial), against a per-image count: the true class's rank
    among the 10 logits (top-1: rank 0; top-5: rank < 5) and its -log softmax."""
    cfg = from_dict({**image_config(), "train": {**image_config()["train"],
                                                 "eval_batch_size": 128}})
    task = build_task(cfg, CPU, DistContext())
    model = _FixedLinear()
    got = task.evaluate(model, 0, DistContext())

    test_set = build_dataset("digits", split="test", root=None, download=False)
    images, labels = test_set.images, test_set.labels
    top1 = top5 = 0
    loss = 0.0
    with torch.no_grad():
        for x, y in zip(images, labels, strict=True):
            z = [float(v) for v in model(x[None])[0]]
            t = int(y)
            rank = sum(1 for v in z if v > z[t])
            top1 += rank == 0
            top5 += rank < 5
            mx = max(z)
            loss += mx + math.log(sum(math.exp(v - mx) for v in z)) - z[t]
    n = len(labels)
    assert n == 540
    assert 0 < top1 < top5 < n  # neither metric is trivial here
    assert got["test_acc"] == pytest.approx(100.0 * top1 / n, abs=1e-9)
    assert got["test_top5"] == pytest.approx(100.0 * top5 / n, abs=1e-9)
    assert got["test_loss"] == pytest.approx(loss / n, rel=1e-5)
