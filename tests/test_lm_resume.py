"""Mid-epoch checkpoints of the language model (``lm.checkpoint_windows``): a run killed inside
an epoch resumes from its last mid-epoch checkpoint and ends bit-identical to an uninterrupted
run (weights, optimiser state, averages, history, record), without redoing the windows before
that checkpoint. One process here; two gloo ranks (each its own hidden state, generators and
sums, gathered to rank 0) and a resume under another number of ranks in the last test.

The kill is simulated: ``train_step`` raises after a given number of windows, i.e. somewhere
between two checkpoints, so the windows after the last checkpoint are lost and redone.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from proc_helpers import free_port
from test_lm_engine import lm_config, timeless, write_corpus

import maxup.lm.task as lm_task
from maxup.engine import DistContext, load_checkpoint, train

EVERY = 5  # windows between mid-epoch checkpoints (the tiny corpus has ~30 windows an epoch)


class Killed(BaseException):
    """The simulated kill (a BaseException, as KeyboardInterrupt: no crash record)."""


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Windows:
    """Counts ``train_step`` calls (windows trained), records what each window starts from
    (its words, the hidden state, the dropout generator's state and the global Python, NumPy
    and torch RNG states), and raises :class:`Killed` at the ``kill_at``-th call, before that
    window trains.

    Each window also draws once from each global generator, as a model whose dropout drew
    from them would (this one's draws all come from the epoch's own generator): without that,
    their states would stay at the epoch's seeding and their restore could not be seen.
    """

    def __init__(self, kill_at: int | None = None):
        self.real, self.calls, self.kill_at = lm_task.train_step, 0, kill_at
        self.seen: list[tuple] = []

    def __call__(self, model, words, targets, hidden, generator, **kwargs):
        self.calls += 1
        if self.calls == self.kill_at:
            raise Killed
        py_rng = hashlib.sha256(repr(random.getstate()).encode()).hexdigest()[:16]
        np_rng = _digest(torch.from_numpy(np.random.get_state()[1].astype(np.int64)))
        self.seen.append((_digest(words), _digest(*(t for hc in hidden for t in hc)),
                          _digest(generator.get_state()), _digest(torch.get_rng_state()),
                          py_rng, np_rng))
        torch.rand(()), random.random(), np.random.rand()
        return self.real(model, words, targets, hidden, generator, **kwargs)


def run(cfg: dict, out: Path, kill_at: int | None = None, **kwargs) -> tuple[dict | None,
                                                                            Windows]:
    """Train (``kill_at``: killed at that window); the record (None if killed) and the
    windows trained."""
    counter = Windows(kill_at)
    lm_task.train_step = counter
    try:
        return train(cfg, out, **kwargs), counter
    except Killed:
        return None, counter
    finally:
        lm_task.train_step = counter.real


def per_epoch_windows(cfg: dict, out: Path) -> tuple[dict, Windows, list[int]]:
    """The uninterrupted run: its record, its windows and their number in each epoch."""
    counts: list[int] = []
    counter = Windows()
    lm_task.train_step = counter
    try:
        record = train(cfg, out, log=None, reporter=lambda m, d: counts.append(counter.calls))
    finally:
        lm_task.train_step = counter.real
    return record, counter, [b - a for a, b in zip([0, *counts], counts, strict=False)]


def assert_same_run(a: Path, b: Path, rec_a: dict, rec_b: dict) -> None:
    """Bit-equal final checkpoints (weights, optimiser, task state) and records."""
    ca = load_checkpoint(a / "checkpoints" / "last.pt")
    cb = load_checkpoint(b / "checkpoints" / "last.pt")
    assert ca["epoch"] == cb["epoch"]
    assert ca["model"].keys() == cb["model"].keys()
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    oa, ob = ca["optimizer"], cb["optimizer"]
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys()
    ta, tb = ca["task"], cb["task"]
    assert ta["partial"] is None and tb["partial"] is None
    for key in ("averaging", "avg_count", "stage", "val_history", "best_val_loss",
                "best_test_loss", "best_epoch"):
        assert ta[key] == tb[key], key
    assert (ta["avg"] is None) == (tb["avg"] is None)
    for x, y in zip(ta["avg"] or [], tb["avg"] or [], strict=True):
        assert torch.equal(x, y)
    assert all(torch.equal(ta["best_model"][k], tb["best_model"][k]) for k in ta["best_model"])
    assert timeless(rec_a["history"]) == timeless(rec_b["history"])
    for key in ("train_ppl", "epoch_val_ppl", "val_ppl", "test_ppl"):
        assert rec_a["final"][key] == rec_b["final"][key], key


@pytest.mark.parametrize(("kill_epoch", "averaging"), [(0, False), (1, True)])
def test_killed_mid_epoch_resumes_bit_identically(tmp_path, one_torch_thread, kill_epoch,
                                                  averaging):
    """Killed 12 windows into epoch ``kill_epoch`` (2 after the checkpoint of window 10):
    resumed, the run redoes only those 2 windows and ends as the uninterrupted one. In the
    second case averaged SGD is on (switch after epoch 1) and MaxUp m = 2 active mid-epoch."""
    root = write_corpus(tmp_path / "corpus")
    cfg = lm_config(root, lm={"checkpoint_windows": EVERY, "switch": 1},
                    train={"epochs": 2})
    full, seen, windows = per_epoch_windows(cfg, tmp_path / "full")
    assert len(windows) == 2 and min(windows) > 3 * EVERY
    assert [h["averaging"] for h in full["history"]] == [True, True]  # averaging in epoch 2

    kill_at = sum(windows[:kill_epoch]) + 2 * EVERY + 3
    rec, cut = run(cfg, tmp_path / "cut", kill_at=kill_at, log=None)
    assert rec is None and len(cut.seen) == kill_at - 1
    mid = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    partial = mid["task"]["partial"]
    assert mid["epoch"] == kill_epoch == partial["epoch"]  # finished epochs
    assert len(mid["history"]) == kill_epoch
    assert partial["windows"] == 2 * EVERY and len(partial["ranks"]) == 1
    assert (mid["task"]["avg_count"] > 0) == averaging
    assert mid["task"]["avg_count"] == (2 * EVERY if averaging else 0)

    lines: list[str] = []
    resumed, redone = run(cfg, tmp_path / "cut", log=lines.append)
    assert resumed["status"] == "completed"
    # only the windows after the checkpoint: none before it is trained again; each starts
    # from the words, hidden state, dropout generator and global RNG states it had unbroken
    done = sum(windows[:kill_epoch]) + 2 * EVERY
    assert len(redone.seen) == sum(windows) - done
    assert redone.seen == seen.seen[done:]
    assert f"after epoch {kill_epoch}; epoch {kill_epoch + 1} continues after window " \
           f"{2 * EVERY}" in lines[0]
    assert_same_run(tmp_path / "full", tmp_path / "cut", full, resumed)
    # The resumed epoch's wall time is the whole epoch's: it holds its training time, which
    # counts the windows before the kill (it held only the part after the resume).
    for h in resumed["history"]:
        assert "resumed_s" not in h
        assert h["wall_s"] >= h["train_s"] + h["eval_s"], h


def test_no_mid_epoch_checkpoint_without_the_key(tmp_path, one_torch_thread):
    """``lm.checkpoint_windows: 0`` (the default): checkpoints at epoch ends only, so a kill
    mid-epoch resumes from the epoch's beginning."""
    root = write_corpus(tmp_path / "corpus", n_train=40)
    cfg = lm_config(root, train={"epochs": 1})
    rec, cut = run(cfg, tmp_path / "cut", kill_at=8, log=None)
    assert rec is None and len(cut.seen) == 7
    assert not (tmp_path / "cut" / "checkpoints" / "last.pt").exists()


# --------------------------------------------------------------------------- two ranks

WORLD = 2


def _worker(rank: int, port: int, root: str, out: str, windows: list[int]) -> None:
    import torch.distributed as tdist

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                             world_size=WORLD, timeout=datetime.timedelta(seconds=30))
    out_dir = Path(out)
    dist = DistContext(rank, WORLD, torch.device("cpu"))
    cfg = lm_config(Path(root), lm={"checkpoint_windows": EVERY, "switch": 1},
                    train={"epochs": 2})
    try:
        _, seen = run(cfg, out_dir / "full", dist=dist, log=None)

        def keep_epoch_end(metrics, checkpoint_dir):  # epoch 1's end, for the 1-rank resume
            if rank == 0 and checkpoint_dir is not None and metrics["epoch"] == 1:
                shutil.copyfile(Path(checkpoint_dir) / "last.pt", out_dir / "epoch1.pt")

        kill_at = windows[0] + 2 * EVERY + 3
        rec, cut = run(cfg, out_dir / "cut", kill_at=kill_at, dist=dist, log=None,
                       reporter=keep_epoch_end)
        assert rec is None and len(cut.seen) == kill_at - 1
        tdist.barrier()  # rank 0 has written the mid-epoch checkpoint
        if rank == 0:
            shutil.copyfile(out_dir / "cut" / "checkpoints" / "last.pt", out_dir / "mid.pt")
        tdist.barrier()
        lines: list[str] = []
        _, redone = run(cfg, out_dir / "cut", dist=dist, log=lines.append)
        torch.save({"seen": seen.seen, "redone": redone.seen, "lines": lines},
                   out_dir / f"rank{rank}.pt")
        tdist.barrier()
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow  # 43-50 s here on the shared 2 cores, mostly two workers importing torch
def test_two_gloo_ranks_resume_mid_epoch(tmp_path, one_torch_thread):
    """Two ranks killed mid-epoch resume bit-identically, each from its own hidden state,
    generators and sums (they differ: dropout is drawn per rank). The same mid-epoch
    checkpoint resumed by one process restarts the epoch from its beginning: it ends exactly
    as one process resuming from the two ranks' checkpoint of the epoch's start."""
    import torch.multiprocessing as mp

    root = write_corpus(tmp_path / "corpus")
    cfg = lm_config(root, lm={"checkpoint_windows": EVERY, "switch": 1}, train={"epochs": 2})
    # the windows of an epoch: all ranks take the same, as one process does
    _, _, windows = per_epoch_windows(cfg, tmp_path / "one")
    mp.spawn(_worker, args=(free_port(), str(root), str(tmp_path), windows), nprocs=WORLD,
             join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    done = windows[0] + 2 * EVERY
    for r in got:  # only the windows after the checkpoint, each from its unbroken states
        assert len(r["redone"]) == windows[1] - 2 * EVERY
        assert r["redone"] == r["seen"][done:]
    assert got[0]["seen"] != got[1]["seen"]  # each rank its own columns, dropout and state
    lines = got[0]["lines"]
    assert "epoch 2 continues after window 10" in lines[0]
    mid = load_checkpoint(tmp_path / "mid.pt")
    ranks = mid["task"]["partial"]["ranks"]
    assert len(ranks) == WORLD
    assert not torch.equal(ranks[0]["generator"], ranks[1]["generator"])
    assert not torch.equal(ranks[0]["hidden"][0][0], ranks[1]["hidden"][0][0])
    rec_full, rec_cut = (json.loads((tmp_path / d / "record.json").read_text())
                         for d in ("full", "cut"))
    assert rec_cut["status"] == "completed"
    assert_same_run(tmp_path / "full", tmp_path / "cut", rec_full, rec_cut)

    # one process: the two ranks' mid-epoch checkpoint restarts epoch 2 from its start
    lines = []
    a = train(cfg, tmp_path / "a", checkpoint_in=tmp_path / "mid.pt", log=lines.append)
    assert "epoch 2 restarts from its beginning" in lines[0] and "2 rank(s)" in lines[0]
    b = train(cfg, tmp_path / "b", checkpoint_in=tmp_path / "epoch1.pt", log=None)
    assert_same_run(tmp_path / "a", tmp_path / "b", a, b)
