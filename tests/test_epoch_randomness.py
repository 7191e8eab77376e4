"""Randomness that must change from one epoch to the next, and be the same when an epoch is
rerun: the order of the training images, the augmentation's draws, the language model's
window lengths and dropout draws.

Every check looks at what the step was actually given (the batches the augmentation received
and what it returned, the windows and generators a language-model step received), never at the
seeds the code derives.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from maxup.config import from_dict
from maxup.engine import DistContext, build_run, build_task, train_epoch

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors, a busy machine


def image_config() -> dict:
    return {
        "seed": 5,
        "model": {"name": "small_cnn"},
        "data": {"name": "digits", "subset": 96},
        "augment": {"ops": ["gaussian"], "sigma": 0.25},
        "maxup": {"m": 1, "warmup_epochs": 0},
        "optim": {"lr": 0.05, "momentum": 0.9, "schedule": "constant"},
        "train": {"epochs": 3, "batch_size": 32, "device": "cpu", "progress": False},
    }


class _Spy:
    """Wraps an augmentation; keeps every (input batch, output batch) it saw."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, x, y, generator):
        xa, ta = self.inner(x, y, generator)
        self.calls.append((x.clone(), xa.detach().clone()))
        return xa, ta


def _epochs(epochs: list[int]) -> list[tuple[list[int], torch.Tensor, dict]]:
    """Per listed epoch of a fresh run: the order of the training images (their indices in
    the training set), the noise the augmentation added at each batch position (by step) and
    the noise each image received (by image index)."""
    run = build_run(from_dict(image_config()), CPU)
    spy = _Spy(run.objective.augmentation)
    run.objective.augmentation = spy
    images = run.train_set.images
    flat = images.flatten(1)
    out = []
    for epoch in epochs:
        spy.calls.clear()
        train_epoch(run, run.model, epoch, DistContext(), False)
        order, noise, by_image = [], [], {}
        for x, xa in spy.calls:
            for row, aug in zip(x.flatten(1), xa.flatten(1), strict=True):
                hits = (flat == row).all(1).nonzero().flatten().tolist()
                assert len(hits) >= 1
                index = next(h for h in hits if h not in by_image)
                order.append(index)
                by_image[index] = aug - row
            noise.append(xa - x)
        out.append((order, torch.cat(noise), by_image))
    return out


def test_image_order_and_augmentation_draws_change_every_epoch_and_repeat_on_rerun():
    (o0, n0, b0), (o1, n1, b1), (o2, n2, b2) = _epochs([0, 1, 2])
    n_images = 96
    for order in (o0, o1, o2):
        assert sorted(order) == list(range(n_images))  # each image once per epoch
    assert o0 != list(range(n_images))  # shuffled, not the stored order
    assert o0 != o1 and o1 != o2 and o0 != o2  # a new order every epoch
    # the noise drawn at the same step position differs between epochs...
    assert not torch.equal(n0, n1) and not torch.equal(n1, n2)
    # ...and so does the noise each image receives
    assert all(not torch.equal(b0[i], b1[i]) for i in range(n_images))
    # the draws are the augmentation's: Gaussian noise of std sigma around each image
    for noise in (n0, n1):
        assert abs(float(noise.std()) - 0.25) < 0.02 and abs(float(noise.mean())) < 0.02
    # rerunning epoch 1 in a fresh run (as a resume does) repeats it exactly
    ((r1, rn1, _),) = _epochs([1])
    assert r1 == o1 and torch.equal(rn1, n1)


# --------------------------------------------------------------------------- language model

WORDS = "the a lord said unto him and it was good day night".split()


def _corpus(root: Path) -> Path:
    rng = random.Random(1)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", 160), ("valid", 10), ("test", 10)):
        lines = [" " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + " \n"
                 for _ in range(n)]
        (root / f"ptb.{name}.txt").write_text("".join(lines))
    return root


def lm_config(root: Path, **lm) -> dict:
    return {
        "seed": 2,
        "model": {"name": "awd_lstm"},
        "data": {"name": "ptb", "root": str(root)},
        "lm": {"emsize": 6, "nhid": 8, "nlayers": 2, "bptt": 10, "eval_batch_size": 2,
               "test_batch_size": 1, "asgd": "off", "dropoute": 0.3, "dropouti": 0.2,
               "dropouth": 0.1, "dropout": 0.2, "wdrop": 0.2, **lm},
        "maxup": {"m": 2, "warmup_epochs": 0},
        "optim": {"lr": 2.0, "momentum": 0.0, "weight_decay": 1.2e-6, "schedule": "constant"},
        "train": {"epochs": 3, "batch_size": 4, "device": "cpu", "progress": False},
    }


def _lm_epochs(root: Path, epochs: list[int], monkeypatch) -> list[tuple[list[int], list]]:
    """Per listed epoch of a fresh LM task: the window lengths its steps took and the state of
    the step generator at every step (what the dropout and word masks are drawn from)."""
    import maxup.lm.task as lm_task

    seen: list[tuple[int, torch.Tensor]] = []
    real = lm_task.train_step

    def spy(model, words, targets, hidden, generator, **kw):
        seen.append((words.shape[0], generator.get_state().clone()))
        return real(model, words, targets, hidden, generator, **kw)

    monkeypatch.setattr(lm_task, "train_step", spy)
    task = build_task(from_dict(lm_config(root)), CPU, DistContext())
    out = []
    for epoch in epochs:
        seen.clear()
        task.train_epoch(task.model, epoch, DistContext(), False)
        out.append(([n for n, _ in seen], [g for _, g in seen]))
    return out


def test_lm_window_lengths_and_dropout_draws_change_every_epoch(tmp_path, monkeypatch):
    root = _corpus(tmp_path / "c")
    (l0, g0), (l1, g1) = _lm_epochs(root, [0, 1], monkeypatch)
    assert len(l0) >= 4 and len(l1) >= 4
    assert l0 != l1  # variable BPTT draws new lengths each epoch
    assert not torch.equal(g0[0], g1[0])  # the first step's masks are new draws too
    assert all(not torch.equal(a, b) for a, b in zip(g0, g0[1:]))  # and every step's
    ((r1, rg1),) = _lm_epochs(root, [1], monkeypatch)
    assert r1 == l1 and all(torch.equal(a, b) for a, b in zip(rg1, g1, strict=True))


def test_word_masks_are_independent_across_sequences_and_copies():
    """Every column holds the same 50 distinct words: a mask shared by the columns (or the
    copies) would give equal scales; independent Bernoulli(1 - p) keeps agree on a word with
    probability p^2 + (1-p)^2 = 0.58."""
    from maxup.models.awd_lstm import word_dropout_scale

    g = torch.Generator().manual_seed(0)
    t, b, m, p = 50, 40, 3, 0.3
    words = torch.randperm(1000, generator=g)[:t].unsqueeze(1).expand(t, b).contiguous()
    s = word_dropout_scale(words, p, g, per_sequence_copies=m)
    assert s.shape == (m, t, b)
    keep = s > 0
    agree_cols = (keep[:, :, :, None] == keep[:, :, None, :]).float()  # (m, T, B, B)
    off_diag = ~torch.eye(b, dtype=torch.bool)
    rate_cols = float(agree_cols[..., off_diag].mean())
    rate_copies = float((keep[0] == keep[1]).float().mean())
    expected = p * p + (1 - p) ** 2
    assert abs(rate_cols - expected) < 0.03
    assert abs(rate_copies - expected) < 0.04
    assert abs(float(keep.float().mean()) - (1 - p)) < 0.02
