"""Issue 27, "long silences": inside a language model's epoch (8.8 min on the README's KJV run)
the heartbeat said only "epoch 1/40 in progress"; it now names the window the epoch is at, of
how many (the count drawn as the loop draws its window lengths, fine-tuning's cap included)."""

from __future__ import annotations

import pytest
from test_lm_loop import CPU, DIST, config, corpus

import maxup.lm.task as lm_task
from maxup import records
from maxup.config import from_dict
from maxup.engine import build_task
from maxup.platform.liveness import run_describer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_regression_the_heartbeat_names_the_window_of_an_lm_epoch(tmp_path, monkeypatch):
    # 3 epochs, the last a fine-tuning stage (windows capped at bptt + 10)
    cfg = config(corpus(tmp_path / "c", n_train=400), lm={"finetune_epochs": [1]})
    task = build_task(from_dict(cfg), CPU, DIST)
    record = tmp_path / "record.json"
    describe = run_describer(record, 3)
    lines: list[str] = []
    real_step = lm_task.train_step

    def train_step(*args, **kw):  # the heartbeat's line as each window starts
        lines.append(describe(9.0))
        return real_step(*args, **kw)

    monkeypatch.setattr(lm_task, "train_step", train_step)
    for epoch in range(3):
        lines.clear()
        task.train_epoch(task.model, epoch, DIST, False)
        windows = len(lines)
        assert windows > 10
        for k, line in enumerate(lines):  # k windows done when window k + 1 starts
            assert line.startswith(f"... epoch {epoch + 1}/3 (window {k} of {windows}) in "
                                   "progress for "), line
        # the epoch's line: its record (what the describer reads) holds it
        records.write_record(record, records.build_record(
            config=cfg, history=[{"epoch": e + 1, "wall_s": 1.0} for e in range(epoch + 1)],
            status="running", timings={}, env={}))


def test_count_windows_is_the_loops_count_also_when_fine_tuning_caps_the_windows():
    import torch

    for stage, bptt in [(0, 10), (1, 10), (0, 70), (1, 70)]:
        gen = torch.Generator().manual_seed(7)
        starts, i = [], 0
        while i < 5000 - 2:  # the loop's rule, written out
            n = lm_task.draw_seq_len(bptt, gen)
            starts.append(i)
            i += min(n, bptt + 10) if stage else n
        assert lm_task.count_windows(5000, bptt, torch.Generator().manual_seed(7),
                                     stage) == len(starts)


def test_no_position_is_named_for_another_epoch_or_without_training(tmp_path):
    from maxup.engine.progress import Progress

    describe = run_describer(tmp_path / "r.json", 5)
    Progress(False, 120, 3, 5, unit="window").update(40, 1.0)
    assert describe(9.0).startswith("... set-up or epoch 1/5 in progress for ")
    Progress(False, 120, 1, 5).update(40, 1.0)
    assert describe(9.0).startswith("... epoch 1/5 (batch 40 of 120) in progress for ")
