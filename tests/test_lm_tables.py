"""Tables 6/7 from real language-modelling records (tiny PTB-format corpus, two seeds per arm)."""

from __future__ import annotations

import numpy as np
import pytest

from maxup.analysis import build_table, load_records
from maxup.engine import train
from tests.test_lm_engine import lm_config, write_corpus


def test_table6_from_lm_records(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    finals = {}
    for m in (1, 2):
        for seed in (0, 1):
            cfg = lm_config(root, seed=seed, maxup={"m": m, "warmup_epochs": 0},
                            train={"epochs": 2})
            cfg["lm"].update(dyneval=True, dyneval_batch_size=4, dyneval_batches=3)
            rec = train(cfg, tmp_path / "runs" / f"m{m}s{seed}", log=None,
                        record_extra={"paper_table": "6"})
            finals.setdefault(m, []).append(rec["final"])
    table = build_table(load_records(tmp_path / "runs"), "6")
    # rows: baseline (m = 1), the per-sequence control (not trained here), MaxUp; columns:
    # Params, Valid, Test, Valid + dyn, Test + dyn
    assert all(table.cell(1, col).missing for col in range(5))
    for row, m in ((0, 1), (2, 2)):
        for col, key in enumerate(("params_m", "val_ppl", "test_ppl", "dyn_val_ppl",
                                   "dyn_test_ppl")):
            cell = table.cell(row, col)
            assert cell.n == 2
            assert cell.mean == pytest.approx(np.mean([f[key] for f in finals[m]]))


def _lm_epoch(epoch: int, val: float, test: float) -> dict:
    return {"epoch": epoch, "epoch_val_ppl": val, "val_ppl": val, "test_ppl": test}


def test_regression_lm_best_is_the_lowest_validation_epoch_not_the_first():
    """An LM record's ``best`` held epoch 1 (the image rule looked for test_acc); it is the
    epoch of lowest validation perplexity, also when read from a record written before."""
    from maxup import records

    history = [_lm_epoch(1, 502.9, 477.3), _lm_epoch(2, 404.7, 362.3),
               _lm_epoch(3, 410.0, 362.3), _lm_epoch(4, 404.7, 362.3)]
    assert records.best_entry(history)["epoch"] == 2  # lowest, earliest of the tie
    images = [{"epoch": 1, "test_acc": 80.0}, {"epoch": 2, "test_acc": 90.0},
              {"epoch": 3, "test_acc": 90.0}]
    assert records.best_entry(images)["epoch"] == 2
    config = {"seed": 0, "data": {"name": "kjv"}}
    doc = {"schema": records.SCHEMA, "trial_id": "t", "status": "completed", "config": config,
           "final": history[-1], "best": history[0], "history": history}
    rec = records.parse_record(doc)
    assert rec.best == history[1]
    assert records.parse_record(rec.to_dict()) == rec
    image_doc = dict(doc, history=images, final=images[-1], best=images[0])
    assert records.parse_record(image_doc).best == images[0]  # image records are read as stored
