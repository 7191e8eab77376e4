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
    # rows: baseline (m = 1), MaxUp; columns: Params, Valid, Test, Valid + dyn, Test + dyn
    for row, m in ((0, 1), (1, 2)):
        for col, key in enumerate(("params_m", "val_ppl", "test_ppl", "dyn_val_ppl",
                                   "dyn_test_ppl")):
            cell = table.cell(row, col)
            assert cell.n == 2
            assert cell.mean == pytest.approx(np.mean([f[key] for f in finals[m]]))
