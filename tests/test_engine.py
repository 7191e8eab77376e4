"""The training engine: determinism, exact resume, checkpoints, failures, schedules, records."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_helpers import with_sections

from maxup.engine import load_checkpoint, save_checkpoint, train

REPO = Path(__file__).resolve().parent.parent

# digits (8x8), a 256-image subset, small_cnn: about a second per epoch on a CPU
BASE = {
    "seed": 0,
    "model": {"name": "small_cnn"},
    "data": {"name": "digits", "subset": 256},
    "augment": {"ops": ["gaussian"], "sigma": 0.25},
    "maxup": {"m": 2, "warmup_epochs": 1},
    "optim": {"lr": 0.05, "momentum": 0.9, "schedule": "multistep", "milestones": [2],
              "gamma": 0.1},
    "train": {"epochs": 3, "batch_size": 64, "eval_batch_size": 540, "device": "cpu",
              "progress": False},
}
TIMING_KEYS = {"wall_s", "train_s", "eval_s", "selection_s", "images_per_s"}


def config(**sections) -> dict:
    """BASE with sections updated, e.g. config(train={"epochs": 4})."""
    return with_sections(copy.deepcopy(BASE), sections)


def metrics_only(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def run(cfg: dict, out: Path, **kw) -> dict:
    return train(cfg, out, log=None, **kw)


def final_state(out: Path) -> dict:
    return load_checkpoint(out / "checkpoints" / "last.pt")["model"]


# --------------------------------------------------------------------------- determinism

def test_same_seed_same_metrics_different_seed_differs(tmp_path):
    a = run(config(), tmp_path / "a")
    b = run(config(), tmp_path / "b")
    c = run(config(seed=1), tmp_path / "c")
    assert len(a["history"]) == 3
    assert metrics_only(a["history"]) == metrics_only(b["history"])
    sa, sb = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert metrics_only(a["history"]) != metrics_only(c["history"])
    assert a["history"][-1]["train_loss"] != c["history"][-1]["train_loss"]


# --------------------------------------------------------------------------- exact resume

class _StopAfter:
    """A reporter that interrupts the run after epoch ``k`` (as Ctrl-C would)."""

    def __init__(self, k: int):
        self.k = k

    def __call__(self, metrics, checkpoint_dir):
        if metrics["epoch"] == self.k:
            raise KeyboardInterrupt


@pytest.mark.parametrize(("checkpoint_every", "stop_after"), [(1, 2), (2, 3)])
def test_exact_resume_after_interrupt(tmp_path, checkpoint_every, stop_after):
    """Stopped after epoch k and resumed == uninterrupted; each epoch once in the history.

    With checkpoint_every=2 and a stop after epoch 3 the run restarts from epoch 2's checkpoint
    and redoes epoch 3 (whose row was in the interim record but not in the checkpoint).
    """
    cfg = config(train={"epochs": 4, "checkpoint_every": checkpoint_every})
    full = run(cfg, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "cut", reporter=_StopAfter(stop_after))
    interim = json.loads((tmp_path / "cut" / "record.json").read_text())
    assert interim["status"] == "running"
    assert [h["epoch"] for h in interim["history"]] == list(range(1, stop_after + 1))
    resumed = run(cfg, tmp_path / "cut", resume=True)
    assert resumed["status"] == "completed"
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    assert metrics_only(resumed["history"]) == metrics_only(full["history"])
    assert metrics_only([resumed["final"]]) == metrics_only([full["final"]])
    sf, sr = final_state(tmp_path / "full"), final_state(tmp_path / "cut")
    assert sf.keys() == sr.keys()
    assert all(torch.equal(sf[k], sr[k]) for k in sf)  # BN running stats included
    on_disk = json.loads((tmp_path / "cut" / "record.json").read_text())
    assert [h["epoch"] for h in on_disk["history"]] == [1, 2, 3, 4]
    assert on_disk["created"] == interim["created"]
    jsonl = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in jsonl] == [1, 2, 3, 4]


def test_resume_with_a_different_config_is_refused(tmp_path):
    from maxup.errors import UsageError

    cfg = config(train={"epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "r", reporter=_StopAfter(1))
    with pytest.raises(UsageError, match="maxup.m"):
        run(config(train={"epochs": 2}, maxup={"m": 3}), tmp_path / "r", resume=True)


_CHILD = """
import json, sys, torch
from maxup.engine import train
torch.set_num_threads(int(sys.argv[3]))
cfg = json.loads(sys.argv[1])
train(cfg, sys.argv[2], log=None)
"""


@pytest.mark.slow
def test_exact_resume_after_sigkill(tmp_path):
    """A process killed with SIGKILL once epoch 2's checkpoint exists resumes exactly."""
    cfg = config(train={"epochs": 6}, data={"subset": 512})
    out = tmp_path / "killed"
    ckpt = out / "checkpoints" / "last.pt"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # Same intra-op thread count as this process: float sums depend on it.
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(cfg), str(out),
                             str(torch.get_num_threads())], env=env, cwd=REPO)
    killed_at = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpt.exists():
                killed_at = load_checkpoint(ckpt)["epoch"]
                if killed_at >= 2:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.05)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert 2 <= killed_at < 6
    assert not list(ckpt.parent.glob("*.tmp"))  # or at worst a temp file, never a half last.pt
    resumed = run(cfg, out, resume=True)
    full = run(cfg, tmp_path / "full")
    assert [h["epoch"] for h in resumed["history"]] == list(range(1, 7))
    assert metrics_only(resumed["history"]) == metrics_only(full["history"])
    sf, sr = final_state(tmp_path / "full"), final_state(out)
    assert all(torch.equal(sf[k], sr[k]) for k in sf)


# --------------------------------------------------------------------------- global state

def _stir_callers_rngs(seed: int) -> None:
    """Seed the caller's global generators and draw once, so they sit mid-stream."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    random.random(), np.random.rand(), torch.rand(1)


def _expected_next_draws(seed: int) -> tuple[list, list, list]:
    """What the stirred global generators draw next, from private generators seeded alike."""
    r, rs = random.Random(seed), np.random.RandomState(seed)
    g = torch.Generator().manual_seed(seed)
    r.random(), rs.rand(), torch.rand(1, generator=g)
    return [r.random() for _ in range(3)], rs.rand(3).tolist(), torch.rand(3, generator=g).tolist()


def _global_states(device: str) -> tuple:
    np_state = np.random.get_state()
    cuda = torch.cuda.get_rng_state().numpy().tobytes() if device == "cuda" else None
    return (random.getstate(), np_state[0], np_state[1].tobytes(), np_state[2:],
            torch.get_rng_state().numpy().tobytes(), cuda,
            torch.get_num_threads(), torch.get_num_interop_threads())


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA device")),
])
def test_train_leaves_the_callers_global_rngs_and_threads_alone(tmp_path, device):
    """train() re-seeds the global generators inside; the caller's are as before, however
    the run ends (completed, interrupted, resumed), and thread settings are untouched."""
    cfg = config(model={"name": "small_cnn", "dropout": 0.3},  # dropout draws from them
                 train={"epochs": 3, "device": device})
    outcomes = {}
    for seed, name, kw in [(11, "full", {}), (12, "cut", {"reporter": _StopAfter(1)}),
                           (13, "cut", {"resume": True})]:
        _stir_callers_rngs(seed)
        before = _global_states(device)
        try:
            outcomes[(seed, name)] = run(cfg, tmp_path / name, **kw)
        except KeyboardInterrupt:
            outcomes[(seed, name)] = None
        assert _global_states(device) == before, (seed, name)
        py, npy, tt = _expected_next_draws(seed)
        assert [random.random() for _ in range(3)] == py
        assert np.random.rand(3).tolist() == npy
        assert torch.rand(3).tolist() == tt
    assert outcomes[(12, "cut")] is None  # the interrupted run did raise
    full, resumed = outcomes[(11, "full")], outcomes[(13, "cut")]
    # The caller's generators do not leak in either: a run sees only its own seed.
    assert metrics_only(resumed["history"]) == metrics_only(full["history"])


def test_train_does_not_depend_on_the_callers_rngs(tmp_path):
    cfg = config(model={"name": "small_cnn", "dropout": 0.3}, train={"epochs": 2})
    _stir_callers_rngs(1)
    a = run(cfg, tmp_path / "a")
    _stir_callers_rngs(2)
    b = run(cfg, tmp_path / "b")
    assert metrics_only(a["history"]) == metrics_only(b["history"])
    sa, sb = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- checkpoints

def test_checkpoint_contents_and_weights_only_load(tmp_path):
    cfg = config(train={"epochs": 2})
    record = run(cfg, tmp_path / "r")
    path = tmp_path / "r" / "checkpoints" / "last.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert {"config", "model", "optimizer", "epoch", "history"} <= set(state)
    assert state["epoch"] == 2
    assert state["config"] == record["config"]
    assert state["config"]["maxup"]["m"] == 2
    assert metrics_only(state["history"]) == metrics_only(record["history"])
    assert all(torch.is_tensor(v) for v in state["model"].values())
    assert any(k.endswith("running_mean") for k in state["model"])
    assert state["optimizer"]["state"]  # momentum buffers
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.9


def test_checkpoint_written_atomically(tmp_path, monkeypatch):
    """If the final rename fails, the previous checkpoint is intact and no temp file remains."""
    path = tmp_path / "checkpoints" / "last.pt"
    cfg = {"seed": 0, "optim": {"schedule": "constant"}}
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(path, config=cfg, model=model, optimizer=opt, epoch=1, history=[{"epoch": 1}])
    before = path.read_bytes()
    with torch.no_grad():
        model.weight.add_(1.0)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, config=cfg, model=model, optimizer=opt, epoch=2,
                        history=[{"epoch": 1}, {"epoch": 2}])
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


# --------------------------------------------------------------------------- failures

def test_non_finite_loss_fails_the_run_with_a_reason(tmp_path):
    # An MLP (no BatchNorm to absorb it) at the largest lr the config allows diverges within
    # the first epoch's 20 steps.
    record = run(config(model={"name": "mlp"}, data={"name": "digits", "subset": None},
                        optim={"lr": 100.0}), tmp_path / "r")
    assert record["status"] == "failed"
    f = record["failure"]
    assert f["reason"] == "non-finite loss"
    assert f["epoch"] == 1 and isinstance(f["step"], int) and f["step"] >= 0
    assert f["value"] in ("nan", "inf", "-inf")
    on_disk = json.loads((tmp_path / "r" / "record.json").read_text())  # valid JSON
    assert on_disk["status"] == "failed" and on_disk["failure"] == f


def test_regression_nan_evaluation_is_never_recorded_as_completed(tmp_path, monkeypatch):
    import maxup.engine.image as image_task

    real = image_task.evaluate

    def nan_accuracy(*args, **kwargs):
        out = real(*args, **kwargs)
        return dict(out, test_acc=float("nan"))

    monkeypatch.setattr(image_task, "evaluate", nan_accuracy)
    record = run(config(), tmp_path / "r")
    assert record["status"] == "failed"
    f = record["failure"]
    assert (f["reason"], f["metric"], f["epoch"], f["value"]) == (
        "non-finite metric", "test_acc", 1, "nan")
    on_disk = json.loads((tmp_path / "r" / "record.json").read_text())
    assert on_disk["status"] == "failed" and on_disk["failure"] == f


def test_non_finite_loss_cli_exit_1(tmp_path, capsys):
    from maxup.cli import main

    out = tmp_path / "r"
    rc = main(["train", str(REPO / "configs" / "digits_smoke.yaml"), "--out", str(out),
               "--optim.lr=100", "--model.name=mlp", "--train.epochs=1",
               "--train.progress=false"])
    assert rc == 1
    assert "non-finite loss" in capsys.readouterr().out
    assert json.loads((out / "record.json").read_text())["status"] == "failed"


# --------------------------------------------------------------------------- warm-up, lr

def test_warmup_epochs_train_with_one_copy(tmp_path):
    record = run(config(maxup={"m": 3, "warmup_epochs": 2}), tmp_path / "r")
    h = record["history"]
    assert [r["maxup_active"] for r in h] == [False, False, True]
    assert [r["maxup_m"] for r in h] == [1, 1, 3]
    assert [len(r["maxup_wins"]) for r in h] == [1, 1, 3]
    assert sum(h[2]["maxup_wins"]) == 256  # one worst copy per training image
    assert h[0]["maxup_gap"] == 0.0 and h[2]["maxup_gap"] > 0.0


@pytest.mark.parametrize("schedule", ["multistep", "cosine", "constant"])
def test_learning_rate_schedule_in_history(tmp_path, schedule):
    epochs, lr0 = 4, 0.08
    cfg = config(maxup={"m": 1, "warmup_epochs": 0}, data={"subset": 64},
                 train={"epochs": epochs, "eval_batch_size": 540},
                 optim={"lr": lr0, "schedule": schedule, "milestones": [1, 3], "gamma": 0.5})
    record = run(cfg, tmp_path / "r")
    if schedule == "multistep":  # torch MultiStepLR: ×gamma once `milestone` epochs are done
        expected = [0.08, 0.04, 0.04, 0.02]
    elif schedule == "cosine":  # per-epoch cosine annealing to 0 over `epochs`
        expected = [lr0 * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
    else:
        expected = [lr0] * epochs
    assert [h["lr"] for h in record["history"]] == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------- outputs

def test_record_is_valid(tmp_path):
    record = run(config(), tmp_path / "r")
    on_disk = json.loads((tmp_path / "r" / "record.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert on_disk["schema"] == "maxup.trial/1"
    assert on_disk["status"] == "completed"
    assert on_disk["sweep"] is None and on_disk["axes"] == {} and on_disk["paper_table"] is None
    assert on_disk["failure"] is None and on_disk["certification"] is None
    cfg = on_disk["config"]
    assert cfg["maxup"]["m"] == 2 and cfg["data"]["subset"] == 256 and cfg["seed"] == 0
    assert on_disk["seed"] == 0
    # trial_id: sha256 of the canonical JSON of the config without the settings that do not
    # change what is trained (where, how fast, how verbosely) and without certification
    ident = copy.deepcopy(cfg)
    for section, key in [("data", "root"), ("data", "num_workers"), ("data", "download"),
                         ("train", "progress"), ("train", "device"), ("train", "deterministic"),
                         ("train", "compile"), ("train", "compile_mode"),
                         ("train", "eval_batch_size"), ("train", "checkpoint_every"),
                         ("train", "start_timeout_s")]:
        ident[section].pop(key)
    ident.pop("certify")
    # a key added after records were stored is left out at the value earlier code ran
    assert cfg["data"]["version"] == 1
    ident["data"].pop("version")
    canon = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    assert on_disk["trial_id"] == hashlib.sha256(canon.encode()).hexdigest()[:12]
    h = on_disk["history"]
    assert [r["epoch"] for r in h] == [1, 2, 3]
    for row in h:
        for key in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "test_top5",
                    "lr", "maxup_active", "maxup_gap", "maxup_wins", "wall_s", "selection_s",
                    "images_per_s"):
            assert key in row, key
        assert 0 <= row["test_acc"] <= row["test_top5"] <= 100
        assert 0 <= row["train_acc"] <= 100
    assert on_disk["final"] == h[-1]
    best = max(h, key=lambda r: r["test_acc"])
    assert on_disk["best"]["test_acc"] == best["test_acc"]
    assert on_disk["best"]["epoch"] == best["epoch"]
    t = on_disk["timings"]
    assert set(t) >= {"wall_s", "train_s", "eval_s", "selection_s", "selection_share",
                      "images_per_s"}
    assert 0.0 <= t["selection_share"] <= 1.0
    assert t["wall_s"] >= t["train_s"] > 0 and t["images_per_s"] > 0
    assert t["wall_s"] == pytest.approx(sum(r["wall_s"] for r in h))
    env = on_disk["environment"]
    assert env["torch"] == torch.__version__
    assert env["python"].count(".") == 2
    assert env["maxup"] and env["device"] == "cpu" and env["workers"] == 1
    assert set(env) >= {"ray", "git_commit", "hostname"}
    assert on_disk["created"] <= on_disk["updated"]


def test_metrics_files_have_one_row_per_epoch(tmp_path):
    run(config(), tmp_path / "r")
    with open(tmp_path / "r" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"lr", "train_loss", "test_acc", "maxup_m"} <= set(rows[0])
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    resolved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert resolved["maxup"]["m"] == 2


# --------------------------------------------------------------------------- real data

@pytest.mark.slow
def test_fashion_mnist_subset_learns(tmp_path):
    """small_cnn on the 2,000-image Fashion-MNIST subset: > 70% test accuracy in 2 epochs.

    The variant of configs/fashion_mnist_maxup.yaml trains with m = 1 and no augmentation:
    MaxUp+Cutout needs more than 2 epochs at this size (67-71% after 2 epochs on our CPU).
    """
    from maxup.config import load_config, to_dict

    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST is not installed")
    cfg = load_config(REPO / "configs" / "fashion_mnist_maxup.yaml",
                      {"train.epochs": 2, "maxup.m": 1, "augment.ops": ["gaussian"],
                       "augment.sigma": 0.0})
    assert cfg.model.name == "small_cnn" and cfg.data.subset == 2000
    record = run(to_dict(cfg), tmp_path / "r")
    assert record["status"] == "completed"
    assert record["final"]["test_acc"] > 70.0, record["final"]


def test_regression_resume_after_final_checkpoint_writes_the_completed_record(tmp_path):
    """Killed after the last checkpoint but before the record: resuming must still write it."""
    out = tmp_path / "run"
    first = run(config(), out)
    (out / "record.json").unlink()
    again = run(config(), out, resume=True)
    on_disk = json.loads((out / "record.json").read_text())
    assert on_disk["status"] == "completed" == again["status"]
    assert metrics_only(on_disk["history"]) == metrics_only(first["history"])
