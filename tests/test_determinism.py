"""``train.deterministic`` and the provenance every record carries (maxup/determinism.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maxup import identity
from maxup.config import load_config, to_dict
from maxup.determinism import NondeterministicOperation, deterministic_mode
from maxup.engine import train

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "digits_smoke.yaml"
#: Record fields that measure the run rather than what it computed.
TIMING = {"wall_s", "train_s", "eval_s", "selection_s", "images_per_s", "selection_share"}


def _computed(record: dict) -> dict:
    """The record without timings, timestamps and the host: what a rerun must reproduce."""
    strip = lambda row: {k: v for k, v in row.items() if k not in TIMING}  # noqa: E731
    out = {k: v for k, v in record.items() if k not in ("timings", "created", "updated")}
    out["history"] = [strip(h) for h in record["history"]]
    out["final"], out["best"] = strip(record["final"]), strip(record["best"])
    return out


def _maxup_train(out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "maxup", "train", str(SMOKE), "--out", str(out),
         "--train.epochs=2", "--data.subset=400", "--train.progress=false"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "record.json").read_text())


def test_two_deterministic_maxup_train_runs_give_bit_identical_records(tmp_path):
    a, b = _maxup_train(tmp_path / "a"), _maxup_train(tmp_path / "b")
    assert a["config"]["train"]["deterministic"] is True
    assert a["history"][1]["maxup_m"] == 4  # the MaxUp selection ran in the second epoch
    assert _computed(a) == _computed(b)
    wa = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    env = a["environment"]
    assert env["deterministic"] is True and env["precision"] == "fp32"


def test_record_states_its_provenance(tmp_path):
    cfg = to_dict(load_config(SMOKE, {"train.epochs": 1, "data.subset": 128,
                                       "train.progress": False}))
    env = train(cfg, tmp_path / "r", log=None)["environment"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                            "--untracked-files=no"], capture_output=True, text=True).stdout
    assert env["git_commit"] == head and env["git_dirty"] is bool(dirty.strip())
    assert env["torch"] == torch.__version__ and env["cuda"] == torch.version.cuda
    assert env["threads"] == torch.get_num_threads()
    assert env["device"] == "cpu" and env["device_name"] and env["tf32"] is None
    assert env["deterministic"] is True and env["precision"] == "fp32"


def test_bf16_on_cpu_is_recorded_as_the_fp32_it_runs(tmp_path):
    cfg = to_dict(load_config(SMOKE, {"train.epochs": 1, "data.subset": 64,
                                       "train.precision": "bf16", "train.progress": False,
                                       "train.deterministic": False}))
    env = train(cfg, tmp_path / "r", log=None)["environment"]
    assert env["precision"] == "fp32" and env["deterministic"] is False


def test_deterministic_is_not_part_of_the_trial_id():
    on = to_dict(load_config(SMOKE))
    off = to_dict(load_config(SMOKE, {"train.deterministic": False}))
    assert on["train"]["deterministic"] is True and off["train"]["deterministic"] is False
    assert identity.trial_id(on) == identity.trial_id(off)


def test_train_restores_the_callers_determinism_settings(tmp_path):
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    assert before[0] is False
    cfg = to_dict(load_config(SMOKE, {"train.epochs": 1, "data.subset": 64,
                                       "train.progress": False}))
    train(cfg, tmp_path / "r", log=None)
    after = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    assert after == before


def test_regression_an_op_without_a_deterministic_implementation_is_one_line():
    # put_ has no deterministic implementation on the CPU either: torch raises, and the
    # engine's wrapper names the setting in one line.
    with pytest.raises(NondeterministicOperation) as info:
        with deterministic_mode(True, torch.device("cpu")):
            torch.zeros(3).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))
    text = str(info.value)
    assert "\n" not in text and text.startswith("train.deterministic: got true")
    assert "put_" in text and "allowed: false" in text
    assert torch.are_deterministic_algorithms_enabled() is False
    with deterministic_mode(False, torch.device("cpu")):  # off: the op runs
        torch.zeros(3).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))


def test_provenance_line_names_what_a_record_states_and_what_it_lacks(tmp_path):
    from maxup import records

    cfg = to_dict(load_config(SMOKE, {"train.epochs": 1, "data.subset": 64,
                                       "train.progress": False}))
    env = train(cfg, tmp_path / "r", log=None)["environment"]
    line = records.provenance(env)
    assert line.startswith(f"commit {env['git_commit'][:8]}")
    assert f"{env['device_name']} ({env['cpu_capability']})" in line
    assert f"torch {torch.__version__}" in line and "; fp32; deterministic; " in line
    assert line.endswith(f"{env['threads']} thread" + ("s" if env["threads"] != 1 else ""))
    old = records.provenance({"git_commit": "d3d9bb53ea07", "torch": "2.14.1", "device": "cpu"})
    assert old == ("commit d3d9bb53; cpu model not recorded; torch 2.14.1; precision not "
                   "recorded; determinism not recorded")
    gpu = records.provenance({**env, "device": "cuda:0", "device_name": "NVIDIA H200",
                              "cuda": "13.0", "cudnn": 91002, "tf32": "conv"})
    assert "NVIDIA H200; torch" in gpu and "CUDA 13.0, cuDNN 91002" in gpu
    assert "fp32 (TF32: conv)" in gpu


def test_status_lists_the_provenance_of_every_stored_trial():
    from maxup.platform.status import render, sweep_status

    st = sweep_status(str(REPO / "reproduction" / "certify_digits"))
    lines = render(st)
    start = lines.index("provenance:")
    groups = [line for line in lines[start + 1:] if line.startswith("  ") and " trial" in line]
    counts = [int(line.split()[0]) for line in groups]
    assert sum(counts) == sum(t.record is not None for t in st.trials) > 0
