"""maxup.checkpoint: one writer and one reader; an unusable file is one line and exit 2."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from maxup.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from maxup.cli import main
from maxup.config import RunConfig, to_dict
from maxup.errors import DataError

REPO = Path(__file__).resolve().parent.parent
DIGITS = str(REPO / "configs" / "digits_maxup.yaml")
GARBAGE = b"\x00\x01 this is not a checkpoint \xff\xfe" * 8
#: Keep the train runs below to a fraction of a second (they should fail before epoch 1).
CHEAP = ["--train.epochs=1", "--maxup.warmup_epochs=0", "--train.progress=false",
         "--train.device=cpu"]


class NotAllowed:
    """An arbitrary class: ``weights_only=True`` must refuse to unpickle an instance."""


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("maxup: error: "), err
    return lines[0]


def _refused_pickle(path: Path) -> Path:
    torch.save({"config": to_dict(RunConfig()), "model": {}, "x": NotAllowed()}, path)
    return path


# --------------------------------------------------------------------------- the CLI


def test_certify_garbage_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "not-a-checkpoint.pt"
    path.write_bytes(GARBAGE)
    rc = main(["certify", str(path), "--sigma", "0.25", "--device", "cpu"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert str(path) in line and "weights_only=True" in line


def test_regression_text_file_as_checkpoint_says_it_is_not_a_torch_file(tmp_path, capsys):
    """torch reads a short text file as a legacy checkpoint and fails with a bare KeyError
    (a number); the line said only "(174812789)"."""
    path = tmp_path / "notes.pt"
    path.write_text("junk\n")
    rc = main(["certify", str(path), "--sigma", "0.25", "--device", "cpu"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert str(path) in line and "not a torch.save file" in line


@pytest.mark.parametrize("kind", ["garbage", "refused_pickle", "empty", "truncated"])
def test_train_resume_from_unusable_checkpoint_is_one_line_exit_2(tmp_path, capsys, kind):
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    if kind == "garbage":
        last.write_bytes(GARBAGE)
    elif kind == "refused_pickle":
        _refused_pickle(last)
    elif kind == "empty":
        last.write_bytes(b"")
    else:  # a real checkpoint cut short, as a full disk would leave a non-atomic write
        model = torch.nn.Linear(64, 10)
        save_checkpoint(last, config=to_dict(RunConfig()), model=model,
                        optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epoch=1,
                        history=[])
        last.write_bytes(last.read_bytes()[:200])
    before = sorted(p.name for p in out.rglob("*"))
    rc = main(["train", DIGITS, "--out", str(out), "--resume", *CHEAP])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert str(last) in line and "expected" in line
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing written


def test_train_resume_from_checkpoint_missing_keys_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    torch.save({"config": to_dict(RunConfig()), "model": {}}, last)
    rc = main(["train", DIGITS, "--out", str(out), "--resume", *CHEAP])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert str(last) in line and "'optimizer'" in line


@pytest.mark.parametrize("kind", ["garbage", "refused_pickle"])
def test_model_weights_unusable_file_is_one_line_exit_2(tmp_path, capsys, kind):
    weights = tmp_path / "weights.pt"
    if kind == "garbage":
        weights.write_bytes(GARBAGE)
    else:
        _refused_pickle(weights)
    out = tmp_path / "run"
    rc = main(["train", DIGITS, "--out", str(out), f"--model.weights={weights}", *CHEAP])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert "model.weights" in line and str(weights) in line
    assert not (out / "checkpoints").exists()


# --------------------------------------------------------------------------- the loader


def test_round_trip_gives_equal_state(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4),
                                torch.nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(8, 5)).sum().backward()
    opt.step()  # momentum buffers exist, so the optimiser state is not empty
    config = to_dict(RunConfig())
    history = [{"epoch": 1, "test_acc": 12.5}]
    path = tmp_path / "sub" / "last.pt"
    save_checkpoint(path, config=config, model=model, optimizer=opt, epoch=1, history=history)
    state = load_checkpoint(path)
    assert state["format"] == CHECKPOINT_FORMAT == 1
    assert state["config"] == config and state["epoch"] == 1 and state["history"] == history
    assert state["scheduler"] == {"schedule": config["optim"]["schedule"], "next_epoch": 1}
    expected = model.state_dict()
    assert list(state["model"]) == list(expected)
    for key, value in expected.items():
        assert torch.equal(state["model"][key], value), key
    buffers = opt.state_dict()["state"]
    assert set(state["optimizer"]["state"]) == set(buffers) and buffers
    for idx, entry in buffers.items():
        assert torch.equal(state["optimizer"]["state"][idx]["momentum_buffer"],
                           entry["momentum_buffer"])
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left no temp file


def test_ddp_wrapper_is_unwrapped_on_save(tmp_path):
    inner = torch.nn.Linear(3, 2)
    wrapper = torch.nn.Module()
    wrapper.module = inner  # what DistributedDataParallel exposes
    path = tmp_path / "c.pt"
    save_checkpoint(path, config=to_dict(RunConfig()), model=wrapper,
                    optimizer=torch.optim.SGD(inner.parameters(), lr=0.1), epoch=0, history=[])
    assert sorted(load_checkpoint(path)["model"]) == ["bias", "weight"]


def test_refused_pickle_runs_no_code_and_is_also_an_unpickling_error(tmp_path):
    path = _refused_pickle(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert isinstance(info.value, DataError) and isinstance(info.value, pickle.UnpicklingError)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"checkpoint {str(path)!r}: cannot be loaded")
    assert "NotAllowed" in str(info.value)


@pytest.mark.parametrize(
    ("payload", "require", "needle"),
    [
        ([1, 2, 3], ("config", "model"), "got list; expected a dict with 'config' and 'model'"),
        ({"model": {}}, ("config", "model"), "got a dict without 'config'"),
        ({"a": 1}, ("config", "model", "epoch"),
         "without 'config', 'model' and 'epoch'; expected a dict with"),
        (torch.zeros(2), (), "got Tensor; expected a dict"),
    ],
)
def test_wrong_layout_is_one_line(tmp_path, payload, require, needle):
    path = tmp_path / "c.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, require=require)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert info.value.path == str(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path)


def test_require_empty_accepts_a_raw_state_dict(tmp_path):
    sd = torch.nn.Linear(2, 2).state_dict()
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    loaded = load_checkpoint(path, require=())
    assert all(torch.equal(loaded[k], v) for k, v in sd.items()) and set(loaded) == set(sd)


def test_loaded_tensors_are_on_the_cpu(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"config": {}, "model": {"w": torch.ones(2)}}, path)
    assert load_checkpoint(path)["model"]["w"].device.type == "cpu"


# --------------------------------------------------------------------------- the last epoch


def _digits_test_split():
    """The digits test split as documented (maxup/data/digits.py), built here with
    scikit-learn directly: 540 images of 1x8x8 in [0, 1] and their labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    _, x, _, y = train_test_split(d.data, d.target, test_size=0.3, random_state=0,
                                  stratify=d.target)
    return (torch.as_tensor(x, dtype=torch.float32).div(16.0).reshape(-1, 1, 8, 8),
            torch.as_tensor(y, dtype=torch.long))


def test_regression_last_checkpoint_is_the_last_epoch_and_reproduces_the_record(tmp_path):
    """When the epoch count is not a multiple of train.checkpoint_every, the run still ends
    with a checkpoint of its last epoch: last.pt says epoch ``epochs``, holds the whole
    history, and its weights reproduce the record's final test accuracy and loss (computed
    here by hand on the test split), so certification certifies the model the record
    describes, not the one from the last multiple of checkpoint_every."""
    import torch.nn.functional as F

    from maxup.certify import load_model_from_checkpoint
    from maxup.engine import train

    epochs, every = 3, 2
    cfg = {"seed": 0, "model": {"name": "small_cnn"}, "data": {"name": "digits", "subset": 128},
           "augment": {"ops": ["gaussian"], "sigma": 0.25}, "maxup": {"m": 2, "warmup_epochs": 1},
           "optim": {"lr": 0.05, "momentum": 0.9, "schedule": "constant"},
           "train": {"epochs": epochs, "checkpoint_every": every, "batch_size": 64,
                     "eval_batch_size": 540, "device": "cpu", "progress": False}}
    reported = []
    record = train(cfg, tmp_path / "run", log=None,
                   reporter=lambda metrics, ckpt: reported.append((metrics["epoch"], ckpt)))
    assert record["status"] == "completed"
    assert [e for e, ckpt in reported if ckpt is not None] == [2, 3]  # every 2nd, and the last
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(last, require=("epoch", "history", "model"))
    assert state["epoch"] == epochs
    assert [h["epoch"] for h in state["history"]] == list(range(1, epochs + 1))
    assert state["history"][-1]["test_acc"] == record["final"]["test_acc"]

    model, _ = load_model_from_checkpoint(last)
    x, y = _digits_test_split()
    with torch.inference_mode():
        logits = model(x)
    acc = 100.0 * float((logits.argmax(1) == y).double().mean())
    loss = float(F.cross_entropy(logits.double(), y))
    assert acc == pytest.approx(record["final"]["test_acc"], abs=1e-9)
    assert loss == pytest.approx(record["final"]["test_loss"], rel=1e-5)
    # the epochs really differ, so matching the last one is not a coincidence
    assert len({round(h["test_loss"], 6) for h in record["history"]}) == epochs
