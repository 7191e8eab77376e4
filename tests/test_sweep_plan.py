"""A real sweep submits its longest trial first and prints compact progress; `maxup calibrate`
writes a valid profile the planner then uses."""

from __future__ import annotations

import json

import pytest
from sweep_helpers import run_sweep_cli, sweep_records

from maxup.cli import main
from maxup.platform import cost
from maxup.platform.space import load_space


def _space(tmp_path, order_seed: int):
    path = tmp_path / "lf.yaml"
    path.write_text("name: lf\nbase:\n  model: {name: small_cnn}\n  data: {name: digits, "
                    "subset: 300}\n  train: {epochs: 2, batch_size: 50, device: cpu, "
                    "progress: false}\n  maxup: {warmup_epochs: 0}\ngrid:\n  maxup.m: [1, 8]\n"
                    f"seeds: 1\nconcurrency: 1\norder_seed: {order_seed}\n")
    return path


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_runs_the_longest_trial_first_with_compact_progress(tmp_path):
    # a space whose own order puts the cheap m = 1 trial first
    path = next(p for p in (_space(tmp_path, s) for s in range(20))
                if load_space(p).expand()[0].axes["maxup.m"] == 1)
    res = run_sweep_cli(path, tmp_path / "store")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lines = res.stdout.splitlines()
    done = [line for line in lines if line.startswith("[done]")]
    assert len(done) == 2 and "maxup.m=8" in done[0] and "maxup.m=1" in done[1]
    assert "(est. " in done[0]
    status = [line for line in lines if line.startswith("[status]")]
    assert status[-1].startswith("[status] 2 done, 0 running, 0 failed, 0 pending")
    assert not any("Trial status" in line for line in lines)  # Tune's table: --verbose only
    recs = sweep_records(tmp_path / "store", "lf")
    assert all(r["environment"]["device_name"] == cost.cpu_name() for r in recs.values())
    for tid in recs:
        assert list((tmp_path / "store" / "trials" / tid / "tensorboard").glob("*/events.*"))


def test_calibrate_writes_a_profile_the_planner_uses(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MAXUP_PROFILES", str(tmp_path / "p"))
    assert main(["calibrate", "--model", "small_cnn@digits", "--batch", "16", "--repeats", "1",
                 "--device", "cpu", "--threads", "1"]) == 0
    path = tmp_path / "p" / f"{cost.device_slug(cost.cpu_name())}.json"
    prof = cost.load_profile(path)
    t = prof.models["small_cnn@1x8x8"]
    assert t.batch == 16 and t.fwd_s > 0 and t.step_s > 0 and not prof.estimate
    assert "maxup calibrate" in prof.source
    found, note = cost.find_profile(cost.cpu_name(), "cpu")
    assert note is None and found.models == prof.models
    # a corrupt profile there is refused, not overwritten
    path.write_text(json.dumps({**prof.to_dict(), "kind": "abacus"}))
    capsys.readouterr()
    assert main(["calibrate", "--model", "small_cnn@digits", "--repeats", "1"]) == 2
    assert "kind: got 'abacus'" in capsys.readouterr().err
    assert json.loads(path.read_text())["kind"] == "abacus"
    for bad in (["--model", "small_cnn"], ["--model", "nonet@digits"], []):
        assert main(["calibrate", *bad]) == 2
