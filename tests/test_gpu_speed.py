"""benchmarks/gpu_speed.py: its CPU ``--tiny`` run measures every section it promises and
writes them; bad input is refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_speed.py"


@pytest.mark.slow
def test_tiny_run_measures_every_section(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_speed.json").read_text())
    assert result["schema"] == "maxup.gpu_speed/1"
    assert result["environment"]["torch"] and result["environment"]["device_name"]
    # every configuration of the plan's grid, in order, each timed (n = reps) or its error
    grid = [(p, cl, c, name) for p, cl, c, names in result["plan"]["step_grid"]
            for name in names]
    got = [(r["precision"], r["channels_last"], r["compiled"], r["config"])
           for r in result["step"]]
    assert got == [tuple(g) for g in grid]
    for row in result["step"]:
        assert "error" not in row, row
        assert row["n"] == result["plan"]["reps"] and 0 < row["min_ms"] <= row["ms"]
    ratios = {(r["config"], r["compiled"]): r for r in result["ratios"]}
    eager = {r["config"]: r["ms"] for r in result["step"] if not r["compiled"]
             and r["precision"] == "fp32"}
    assert ratios[("efficient-m4-c2", False)]["vs_naive"] == pytest.approx(
        eager["efficient-m4-c2"] / eager["naive-m4"])
    engine = result["engine"]
    assert engine["steps"] == -(-1024 // result["plan"]["engine_batch"])
    assert engine["ratio"] == pytest.approx(
        engine["epoch_train_s"] / (engine["steps"] * engine["step_ms"] / 1e3))
    variants = {r["variant"] for r in result["certify"]["rates"]}
    assert variants == {"fp32", "bf16", "compiled-fp32"}
    assert all(r["samples_per_s"] > 0 for r in result["certify"]["rates"])
    fp32 = next(r for r in result["certify"]["agreement"] if r["variant"] == "fp32")
    assert fp32["same_prediction"] == fp32["images"] == result["plan"]["certify_images"]
    assert fp32["max_radius_diff"] == 0.0
    assert "gpu_speed on" in proc.stdout and (tmp_path / "gpu_speed.txt").exists()


def test_unknown_section_is_refused_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(tmp_path / "o"),
                           "--sections", "step,warp"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("gpu_speed: --sections: got 'warp'; allowed: step, engine, "
                                   "certify")
    assert not (tmp_path / "o").exists()
