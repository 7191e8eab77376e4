"""Data-parallel language modelling: two gloo ranks give the one-process training.

Each rank of :class:`maxup.lm.task.LMTask` trains ``train.batch_size / world_size`` columns
of the batchified stream and averages the gradients over ranks itself (before clipping).
Since the loss (mean cross-entropy + AR + TAR) is a mean over equally shaped shards, the mean
of the ranks' gradients is the gradient of the whole batch, so two ranks must train exactly
as one process on the same columns. Checked here on the real ``LMTask.train_epoch`` (one
epoch of a few variable-length windows, hidden state carried, clipping engaged):

- ``plain``: m = 1 with every dropout off. Dropout masks are drawn per rank (from generators
  seeded by (seed, epoch, rank)), so with dropout on the two layouts draw different masks by
  design and could not be compared;
- ``maxup``: m = 2 with word dropout on but its per-sequence masks replaced by a
  deterministic function of (copy, column, word), identical in both layouts: each column
  selects its worst copy by itself, so sharding the columns must not change the selection.

The same workers check that a NaN loss on one rank stops both at that step, and the metrics
(loss, gap, selection counts) cover all ranks' columns. No Ray: two processes on localhost
(torch.multiprocessing, as tests/test_distributed.py).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
from proc_helpers import free_port
from test_lm_engine import write_corpus

from maxup.config import from_dict
from maxup.engine import DistContext, NonFiniteLoss, build_task, global_rng_preserved
from maxup.errors import ConfigError
from maxup.lm.task import LMTask

WORLD, CLIP = 2, 0.17  # unclipped gradient norms here: 0.11-0.15, two of six steps above 0.17
SCENARIOS = ("plain", "maxup")
CPU = torch.device("cpu")


def lm_config(root: Path, scenario: str, **train) -> dict:
    maxup = scenario == "maxup"
    return {
        "seed": 3,
        "model": {"name": "awd_lstm"},
        "data": {"name": "ptb", "root": str(root), "subset": 200},
        "lm": {"emsize": 8, "nhid": 12, "nlayers": 2, "bptt": 8, "eval_batch_size": 2,
               "test_batch_size": 1, "asgd": "off", "alpha": 2.0, "beta": 1.0, "clip": CLIP,
               "dropout": 0.0, "dropouth": 0.0, "dropouti": 0.0, "wdrop": 0.0,
               "dropoute": 0.9 if maxup else 0.0},
        "maxup": {"m": 2 if maxup else 1, "warmup_epochs": 0},
        "optim": {"lr": 5.0, "momentum": 0.0, "weight_decay": 1.2e-6, "schedule": "constant"},
        "train": {"epochs": 1, "batch_size": 4, "device": "cpu", "progress": False, **train},
    }


def column_masks(words: torch.Tensor, p: float, generator, *,
                 per_sequence_copies: int | None = None) -> torch.Tensor:
    """A deterministic stand-in for ``word_dropout_scale``, the same in any layout: copy k of
    the column whose window starts with word s keeps word w when w + k + s is odd (the two
    copies keep complementary halves of the vocabulary, so their losses differ clearly)."""
    m = per_sequence_copies or 1
    k = torch.arange(m).view(m, 1, 1)
    keep = (words.unsqueeze(0) + k + words[:1].unsqueeze(0)) % 2 != 0
    scale = keep.float() / (1.0 - p)
    return scale if per_sequence_copies else scale[0]


def one_epoch(root: Path, scenario: str, rank: int = 0, world: int = 1) -> dict:
    """Build the task as the engine does and train one epoch; every step's gradient (as
    the optimizer sees it: averaged over ranks and clipped), the weights, the metrics."""
    dist = DistContext(rank, world, CPU)
    task = build_task(from_dict(lm_config(root, scenario)), CPU, dist)
    grads: list[list[torch.Tensor]] = []
    task.optimizer.register_step_pre_hook(lambda *_: grads.append(
        [p.grad.detach().clone() for p in task.model.parameters()]))
    metrics = task.train_epoch(task.model, 0, dist, False)
    return {"grads": grads, "params": [p.detach().clone() for p in task.model.parameters()],
            "columns": task.train_data.shape[1],
            "metrics": {k: metrics[k] for k in ("train_loss", "maxup_wins", "maxup_gap")}}


def nan_epoch(root: Path, rank: int, world: int) -> str:
    """One epoch in which rank 1's third step has a NaN loss; how it ended on this rank."""
    import maxup.lm.task as lm_task

    real = lm_task.train_step
    calls = []

    def nan_on_rank1(*args, **kwargs):
        step = real(*args, **kwargs)
        if rank == 1 and len(calls) == 2:
            step.raw_loss = float("nan")
        calls.append(1)
        return step

    lm_task.train_step = nan_on_rank1
    try:
        one_epoch(root, "plain", rank, world)
        return "finished"
    except NonFiniteLoss as exc:
        return f"NonFiniteLoss step {exc.step}"
    except Exception as exc:  # noqa: BLE001 - a collective timeout is the bug
        return type(exc).__name__
    finally:
        lm_task.train_step = real


def _worker(rank: int, world: int, port: int, root: str, out_dir: str) -> None:
    import torch.distributed as tdist

    import maxup.lm.objective as objective

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                             world_size=world, timeout=datetime.timedelta(seconds=20))
    try:
        objective.word_dropout_scale = column_masks
        result = {s: one_epoch(Path(root), s, rank, world) for s in SCENARIOS}
        result["nan"] = nan_epoch(Path(root), rank, world)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        tdist.barrier()  # no rank tears gloo down while its peer is still inside it
    finally:
        tdist.destroy_process_group()


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


@pytest.mark.slow  # 13-19 s here, nearly all of it the two workers importing torch
def test_two_gloo_ranks_train_as_one_process(tmp_path, monkeypatch, one_torch_thread):
    import torch.multiprocessing as mp

    import maxup.lm.objective as objective

    root = write_corpus(tmp_path / "corpus")
    mp.spawn(_worker, args=(WORLD, free_port(), str(root), str(tmp_path)), nprocs=WORLD,
             join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    monkeypatch.setattr(objective, "word_dropout_scale", column_masks)
    select, margins = objective.select_scales, []

    def recording(scales, losses):
        margins.append(float((losses[0] - losses[1]).abs().min()))
        return select(scales, losses)

    monkeypatch.setattr(objective, "select_scales", recording)
    with global_rng_preserved(CPU):
        single = {s: one_epoch(root, s) for s in SCENARIOS}
    # No near-tie between a column's copies: their window losses (~20 nats, float32) differ
    # far above rounding, so the layouts' reduction order cannot flip a selection.
    assert margins and min(margins) > 1e-4, min(margins)

    for s in SCENARIOS:
        one, (r0, r1) = single[s], (ranks[0][s], ranks[1][s])
        assert one["columns"] == 4 and r0["columns"] == r1["columns"] == 2
        steps = len(one["grads"])
        assert steps >= 4 and len(r0["grads"]) == len(r1["grads"]) == steps
        # the all-reduce leaves both ranks with the same gradient, hence the same weights
        for g0, g1 in zip(r0["grads"], r1["grads"], strict=True):
            assert _max_diff(g0, g1) == 0
        assert _max_diff(r0["params"], r1["params"]) == 0
        # ... and it is the one-process gradient of the whole batch, step after step
        for g, want in zip(r0["grads"], one["grads"], strict=True):
            assert _max_diff(g, want) < 1e-6, s
        assert _max_diff(r0["params"], one["params"]) < 1e-6, s
        # Some steps were clipped (norm = the clip), some not: the averaging is visible through
        # the clip (a sum over ranks instead of the mean would be clipped back on every step).
        norms = [float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(t) for t in g]))) for g in one["grads"]]
        clipped = [abs(n - CLIP) < 1e-6 for n in norms]
        assert any(clipped) and not all(clipped), norms
        got, want = r0["metrics"], one["metrics"]
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-6)
        assert got["maxup_gap"] == pytest.approx(want["maxup_gap"], rel=1e-5, abs=1e-7)
        assert got["maxup_wins"] == want["maxup_wins"]  # summed over the ranks' columns
    wins = single["maxup"]["metrics"]["maxup_wins"]
    assert len(wins) == 2 and min(wins) > 0  # each copy was some column's worst
    # a NaN loss on one rank stops both at that step (none waits in the all-reduce)
    assert [r["nan"] for r in ranks] == ["NonFiniteLoss step 2"] * WORLD


def test_batch_size_not_a_multiple_of_the_workers_is_refused(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    cfg = from_dict(lm_config(root, "plain", batch_size=5))
    with pytest.raises(ConfigError) as exc:
        LMTask(cfg, CPU, rank=0, world_size=2)
    assert str(exc.value).startswith("train.batch_size: got 5;")
    assert "\n" not in str(exc.value)
