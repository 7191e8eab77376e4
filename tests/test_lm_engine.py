"""The language-modelling task in the engine: training, records, NT-ASGD, fine-tuning stages,
exact resume, refusals."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import pytest
import torch
from torch_helpers import with_sections

from maxup.config import from_dict
from maxup.engine import load_checkpoint, train
from maxup.errors import ConfigError, UsageError
from maxup.lm.task import batchify, draw_seq_len, window

WORDS = ["the", "a", "lord", "said", "unto", "him", "and", "it", "was", "good", "day", "night"]


def write_corpus(root: Path, seed: int = 0, n_train: int = 120) -> Path:
    """A tiny PTB-format corpus with some structure (a bigram chain) to learn."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)

    def lines(n):
        out = []
        for _ in range(n):
            w, line = rng.choice(WORDS), []
            for _ in range(rng.randint(3, 9)):
                line.append(w)
                w = WORDS[(WORDS.index(w) + rng.choice([1, 1, 1, 2])) % len(WORDS)]
            out.append(" " + " ".join(line) + " \n")
        return "".join(out)

    (root / "ptb.train.txt").write_text(lines(n_train))
    (root / "ptb.valid.txt").write_text(lines(12))
    (root / "ptb.test.txt").write_text(lines(12))
    return root


def lm_config(root: Path, **sections) -> dict:
    cfg = {
        "seed": 0,
        "model": {"name": "awd_lstm"},
        "data": {"name": "ptb", "root": str(root)},
        "lm": {"emsize": 8, "nhid": 12, "nlayers": 2, "bptt": 8, "eval_batch_size": 2,
               "test_batch_size": 1, "asgd": "switch", "switch": 2, "dropoute": 0.2,
               "dropouti": 0.2, "dropouth": 0.1, "dropout": 0.2, "wdrop": 0.2},
        "maxup": {"m": 2, "warmup_epochs": 1},
        "optim": {"lr": 5.0, "momentum": 0.0, "weight_decay": 1.2e-6, "schedule": "constant"},
        "train": {"epochs": 4, "batch_size": 4, "device": "cpu", "progress": False},
    }
    return with_sections(cfg, sections)


def timeless(history):
    drop = {"train_s", "selection_s", "eval_s", "wall_s", "tokens_per_s"}
    return [{k: v for k, v in h.items() if k not in drop} for h in history]


# --------------------------------------------------------------------------- helpers

def test_batchify_and_window_as_awd_lstm():
    stream = torch.arange(23)
    data = batchify(stream, 4)  # 5 rows, the tail of 3 dropped; column b = b-th slice
    assert data.shape == (5, 4)
    assert data[:, 1].tolist() == [5, 6, 7, 8, 9]
    x, y = window(data, 3, 10)  # clipped to the end
    assert x.tolist() == [data[3].tolist()] and y.tolist() == [data[4].tolist()]
    with pytest.raises(ConfigError, match="train.batch_size"):
        batchify(torch.arange(7), 4)


def test_variable_bptt_distribution():
    g = torch.Generator().manual_seed(0)
    lens = [draw_seq_len(70, g) for _ in range(4000)]
    assert min(lens) >= 5
    short = sum(x < 52 for x in lens) / len(lens)  # the bptt/2 branch (35 +- 5)
    assert 0.035 < short < 0.065
    long = [x for x in lens if x >= 52]
    assert abs(sum(long) / len(long) - 69.5) < 0.3  # int() truncates N(70, 5)


# --------------------------------------------------------------------------- training

def test_lm_run_trains_and_records_perplexities(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    rec = train(lm_config(root), tmp_path / "run", log=None)
    assert rec["status"] == "completed"
    final = rec["final"]
    for key in ("val_ppl", "test_ppl", "epoch_val_ppl", "train_ppl"):
        assert math.isfinite(final[key]) and final[key] > 1
    vocab = rec["environment"]["corpus"]["vocab_size"]
    assert vocab == len(WORDS) + 1  # + <eos>
    assert final["val_ppl"] < vocab  # learned something: better than uniform
    assert final["val_ppl"] == pytest.approx(math.exp(final["val_loss"]))
    # the kept model is the best validation epoch's
    assert final["val_loss"] == min(h["epoch_val_loss"] for h in rec["history"])
    assert final["params_m"] == pytest.approx(rec["environment"]["parameters"] / 1e6)
    assert len(rec["environment"]["corpus"]["sha256"]) == 64
    # warm-up epoch plain, then MaxUp; averaging from the switch epoch on
    assert [h["maxup_m"] for h in rec["history"]] == [1, 2, 2, 2]
    assert [h["averaging"] for h in rec["history"]] == [False, True, True, True]
    assert all(sum(h["maxup_wins"]) > 0 for h in rec["history"])
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "val_ppl" in header and "test_ppl" in header
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ck["task"]["averaging"] and ck["task"]["avg_count"] > 0
    assert len(ck["task"]["avg"]) == len(ck["model"]) - 1  # tied decoder weight once


def test_nonmono_trigger_starts_averaging(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    # lr so large that validation gets worse: NT-ASGD (nonmono 1) must switch
    cfg = lm_config(root, lm={"asgd": "nonmono", "nonmono": 1, "switch": None},
                    optim={"lr": 60.0}, train={"epochs": 5})
    rec = train(cfg, tmp_path / "run", log=None)
    hist = rec["history"]
    losses = [h["epoch_val_loss"] for h in hist]
    first = next((i for i, h in enumerate(hist) if h["averaging"]), None)
    assert first is not None
    # it switched at the first epoch whose val loss exceeded the best before the last one
    expected = next(i for i in range(2, len(losses)) if losses[i] > min(losses[:i - 1]))
    assert first == expected


def test_exact_resume_after_interrupt_with_averages_and_a_finetune_stage(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    cfg = lm_config(root, lm={"finetune_epochs": [2]}, train={"epochs": 5})

    class Stop:
        def __call__(self, metrics, checkpoint_dir):
            if metrics["epoch"] == 3:
                raise KeyboardInterrupt

    full = train(cfg, tmp_path / "full", log=None)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", log=None, reporter=Stop())
    resumed = train(cfg, tmp_path / "cut", log=None)
    assert resumed["status"] == "completed"
    assert timeless(resumed["history"]) == timeless(full["history"])
    assert [h["stage"] for h in full["history"]] == [0, 0, 0, 1, 1]
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x, y) for x, y in zip(a["task"]["avg"], b["task"]["avg"],
                                                 strict=True))
    assert a["task"]["best_val_loss"] == b["task"]["best_val_loss"]


def test_resume_on_another_vocabulary_is_refused(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    cfg = lm_config(root, train={"epochs": 1})
    train(cfg, tmp_path / "run", log=None)
    other = tmp_path / "other"
    other.mkdir()
    for f in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"):
        (other / f).write_text((root / f).read_text() + " zebra \n")
    cfg2 = lm_config(other, train={"epochs": 2})
    cfg2["train"]["epochs"] = 1
    with pytest.raises(UsageError, match="vocabulary"):
        train(cfg2, tmp_path / "run", log=None)


@pytest.mark.parametrize(("key", "value", "field"), [
    ("lm.bptt", 4, "lm.bptt"), ("lm.dropoute", 1.0, "lm.dropoute"),
    ("lm.wdrop", -0.1, "lm.wdrop"), ("optim.momentum", 0.9, "optim.momentum"),
    ("model.name", "small_cnn", "model.name"), ("lm.finetune_epochs", [4], "lm.finetune_epochs"),
    ("maxup.mode", "naive", "maxup.mode"),  # it was accepted and silently ignored
])
def test_bad_lm_settings_are_refused_naming_the_field(tmp_path, key, value, field):
    cfg = lm_config(tmp_path)
    section, leaf = key.split(".")
    cfg = copy.deepcopy(cfg)
    cfg[section][leaf] = value
    with pytest.raises(ConfigError) as exc:
        from_dict(cfg)
    assert str(exc.value).startswith(field + ":")


def test_lm_record_is_plain_json_with_dynamic_evaluation(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    cfg = lm_config(root, train={"epochs": 2}, maxup={"warmup_epochs": 0})
    cfg["lm"].update(dyneval=True, dyneval_batch_size=4, dyneval_batches=5, dyneval_lr=1e-3)
    train(cfg, tmp_path / "r", log=None)
    doc = json.loads((tmp_path / "r" / "record.json").read_text())
    assert doc["config"]["lm"]["bptt"] == 8 and doc["status"] == "completed"
    assert doc["environment"]["parameters"] > 0
    final = doc["final"]
    assert "dyn_test_ppl" not in doc["history"][0]  # only after the last epoch
    assert math.isfinite(final["dyn_val_ppl"]) and math.isfinite(final["dyn_test_ppl"])
    assert final["dyn_test_ppl"] != final["test_ppl"]  # it adapted
