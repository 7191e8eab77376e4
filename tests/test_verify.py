"""``maxup verify``: stored trials rerun and compared epoch by epoch (maxup/platform/verify.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from maxup import records
from maxup.cli import main
from maxup.config import load_config, to_dict
from maxup.engine import train
from maxup.objective import MaxUpLoss
from maxup.platform import verify

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "digits_smoke.yaml"


def _config(**overrides) -> dict:
    base = {"train.epochs": 3, "data.subset": 256, "train.progress": False}
    return to_dict(load_config(SMOKE, {**base, **overrides}))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished 3-epoch run: warm-up (m = 1) in epoch 1, MaxUp m = 4 in epochs 2 and 3."""
    out = tmp_path_factory.mktemp("verify") / "run"
    train(_config(), out, log=None)
    return out


def _files(root: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_fresh_run_verifies_bit_for_bit_and_the_storage_is_untouched(run_dir, capsys):
    before = _files(run_dir)
    assert main(["verify", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "3 epochs" in out and "bit for bit" in out
    assert "verify: 1 of 1 as promised, 0 FAIL" in out
    assert _files(run_dir) == before


def test_regression_a_planted_change_to_the_objective_fails_at_the_first_maxup_epoch(
        run_dir, capsys, monkeypatch):
    # Picking each example's best copy instead of its worst: warm-up epoch 1 (m = 1) is
    # unchanged, so the runs part at epoch 2.
    real = MaxUpLoss.selection_losses
    monkeypatch.setattr(MaxUpLoss, "selection_losses",
                        lambda self, *a, **k: -real(self, *a, **k))
    assert main(["verify", str(run_dir)]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("FAIL"))
    assert "parts at epoch 2 of 3 epochs" in line and "train_loss" in line
    assert "verify: 0 of 1 as promised, 1 FAIL" in out


def test_epochs_limits_the_rerun_to_a_prefix(run_dir, capsys, monkeypatch):
    calls = []
    real_train = train

    def spy(cfg, out, **kw):
        calls.append(kw["stop_after"])
        return real_train(cfg, out, **kw)

    monkeypatch.setattr("maxup.engine.train", spy)
    assert main(["verify", str(run_dir), "--epochs", "1"]) == 0
    assert calls == [1]
    assert "PASS" in capsys.readouterr().out


def test_the_rerun_uses_the_records_thread_count(run_dir):
    rec = records.parse_record((run_dir / "record.json").read_bytes())
    env = dict(rec.environment, threads=1)
    cand = verify.Candidate(records.parse_record({**rec.to_dict(), "environment": env}),
                            run_dir / "record.json", "run")
    seen = []

    def fake(cfg, out, **kw):
        seen.append(torch.get_num_threads())
        return {"history": rec.history[:kw["stop_after"]],
                "environment": dict(rec.environment)}

    before = torch.get_num_threads()
    outcome = verify.verify_trial(cand, train_fn=fake)
    assert seen == [1] and torch.get_num_threads() == before
    assert outcome.identical and outcome.passed


@pytest.mark.parametrize(("change", "reason"), [
    ({"deterministic": False}, "train.deterministic false"),
    ({"device_name": "Some Other CPU"}, "device_name 'Some Other CPU' recorded"),
    ({"cpu_capability": "AVX2"}, "cpu_capability 'AVX2' recorded"),
    ({"torch": "2.0.0"}, "torch '2.0.0' recorded"),
    ({"device_name": None}, "device_name not recorded"),
    ({"device": "cuda:0"}, "recorded on cuda, rerun on cpu"),
])
def test_expectation_names_why_bit_identity_is_not_promised(run_dir, change, reason):
    here = records.parse_record((run_dir / "record.json").read_bytes()).environment
    assert verify.expectation(here, here) == []
    assert any(reason in r for r in verify.expectation({**here, **change}, here))


def test_a_difference_where_none_is_promised_is_reported_not_failed(run_dir, capsys,
                                                                    monkeypatch, tmp_path):
    doc = json.loads((run_dir / "record.json").read_text())
    doc["environment"]["device_name"] = "Another CPU"
    doc["history"][2]["test_acc"] += 0.5
    other = tmp_path / "other"
    other.mkdir()
    (other / "record.json").write_text(json.dumps(doc))
    assert main(["verify", str(other)]) == 0
    out = capsys.readouterr().out
    assert "DIFF" in out and "parts at epoch 3" in out and "test_acc 0.5" in out
    assert "device_name 'Another CPU' recorded" in out


def test_compare_ignores_timings_and_finds_the_first_differing_epoch():
    a = [{"epoch": 1, "train_loss": 1.0, "wall_s": 3.0, "maxup_wins": [3, 1]},
         {"epoch": 2, "train_loss": 0.5, "wall_s": 3.0, "maxup_wins": [2, 2], "x": "a"}]
    b = [{"epoch": 1, "train_loss": 1.0, "wall_s": 9.0, "maxup_wins": [3, 1]},
         {"epoch": 2, "train_loss": 0.25, "wall_s": 1.0, "maxup_wins": [1, 3], "x": "b"}]
    first, keys, largest = verify.compare(a, b)
    assert first == 2 and keys == ["maxup_wins", "train_loss", "x"]
    assert largest["train_loss"] == 0.25 and largest["maxup_wins"] == 1.0
    assert math.isinf(largest["x"]) and largest["epoch"] == 0.0 and "wall_s" not in largest
    assert verify.compare(a, a)[0] is None


def _storage(root: Path) -> None:
    """Two sweeps sharing trial t1; t3 completed but in no manifest; t4 failed."""
    def record(tid: str, status: str) -> None:
        (root / "trials" / tid).mkdir(parents=True)
        doc = records.build_record(config=_config(), history=[], status=status, timings={},
                                   env={}, sweep="a")
        doc["trial_id"] = tid
        (root / "trials" / tid / "record.json").write_text(json.dumps(doc))

    for tid, status in [("t1", "completed"), ("t2", "completed"), ("t3", "completed"),
                        ("t4", "failed")]:
        record(tid, status)
    for sweep, tids in [("a", ["t4", "t1", "t2"]), ("b", ["t1"])]:
        (root / sweep).mkdir()
        (root / sweep / "sweep.json").write_text(json.dumps(
            {"schema": "maxup.sweep/1", "name": sweep,
             "trials": [{"trial_id": t, "axes": {"seed": i}} for i, t in enumerate(tids)]}))


def test_select_takes_each_sweeps_first_completed_trials_once(tmp_path):
    _storage(tmp_path)
    ids = lambda cands: [c.record.trial_id for c in cands]  # noqa: E731
    assert ids(verify.select(tmp_path, per_sweep=1)) == ["t1"]  # t4 failed; b's t1 shared
    assert ids(verify.select(tmp_path, per_sweep=2)) == ["t1", "t2"]
    assert ids(verify.select(tmp_path / "b", per_sweep=1)) == ["t1"]
    assert sorted(ids(verify.select(tmp_path, per_sweep=None))) == ["t1", "t2", "t3"]


@pytest.mark.parametrize(("args", "field"), [
    (["--trials", "0"], "--trials"),
    (["--epochs", "0"], "--epochs"),
])
def test_bad_input_is_one_line_exit_2(run_dir, capsys, args, field):
    assert main(["verify", str(run_dir), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0]


def test_a_malformed_manifest_is_refused_in_one_line(capsys, tmp_path):
    _storage(tmp_path)
    (tmp_path / "b" / "sweep.json").write_text('{"trials": []}')
    assert main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "b/sweep.json: schema: got None" in err[0]


def test_missing_or_remote_storage_is_refused(capsys, tmp_path):
    assert main(["verify", str(tmp_path / "none")]) == 2
    assert main(["verify", "s3://bucket/maxup"]) == 2
    assert main(["verify", str(tmp_path)]) == 2  # an empty directory: nothing to verify
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("maxup: error: verify: got") or
                                 "no completed trial records" in line for line in err)
