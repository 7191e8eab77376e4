"""benchmarks/gpu_check.py runs (``--tiny``, on the CPU) and the library needs no Ray.

The accelerator machine the GPU check is prepared for has torch and torchvision but no Ray, so
the library parts that need no Ray must not import it, and the check must run on them alone.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
RAY_FREE = ["maxup", "maxup.objective", "maxup.augment", "maxup.models", "maxup.data",
            "maxup.engine", "maxup.certify", "maxup.checkpoint"]
# What gpu_check.py imports from the library: not even scipy, YAML or pandas.
BARE = ["maxup.objective", "maxup.augment", "maxup.models", "maxup.data", "maxup.certify",
        "maxup.checkpoint", "maxup.io"]
HEAVY = ["ray", "scipy", "pandas", "yaml", "pyarrow", "sklearn"]


def _imported_after(*stages: str) -> list[dict]:
    """Run the code ``stages`` in turn in one fresh interpreter; which of HEAVY are in its
    sys.modules after each stage."""
    probe = ["import json, sys", "seen = []"]
    for code in stages:
        probe += [code, f"seen.append({{n: n in sys.modules for n in {HEAVY!r}}})"]
    probe.append("print(json.dumps(seen))")
    proc = subprocess.run([sys.executable, "-c", "\n".join(probe)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_library_imports_do_not_import_ray():
    bare, ray_free = _imported_after("\n".join(f"import {m}" for m in BARE),
                                     "\n".join(f"import {m}" for m in RAY_FREE))
    # What gpu_check.py imports from the library needs only torch, torchvision and numpy.
    assert not any(bare.values()), bare
    assert ray_free["ray"] is False


def test_engine_trains_one_process_run_without_ray(tmp_path):
    cfg = {"seed": 0, "model": {"name": "mlp"}, "data": {"name": "synthetic", "subset": 64},
           "maxup": {"m": 2, "warmup_epochs": 0},
           "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "progress": False}}
    [found] = _imported_after(
        "from maxup.engine import train\n"
        f"rec = train({cfg!r}, {str(tmp_path / 'run')!r}, log=None)\n"
        "assert rec['status'] == 'completed', rec['status']")
    assert found["ray"] is False


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)
    return proc, out


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module (its pure functions: verdicts, comparisons, plans)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check as module
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def _positive(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v) and v > 0


def test_tiny_run_passes_and_reports_every_measurement(tiny_run):
    proc, out = tiny_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "gpu_check.json").read_text())
    assert res["schema"] == "maxup.gpu_check/1" and res["mode"] == "tiny"
    assert res["exit_status"] == 0 and "stopped" not in res
    # Nothing beyond torch/torchvision/numpy was needed.
    assert not any(res["modules"].values()), res["modules"]
    plan = res["plan"]

    fp = res["correctness"]["fp32_device_vs_cpu"]
    assert fp["passed"] is True and fp["compared"] == "cpu vs cpu"
    assert fp["skipped_reason"]  # honest: no device was compared
    for mode in ("efficient", "naive"):
        r = fp["modes"][mode]
        assert r["passed"] is True and r["selection_agreement"] == 1.0
        assert r["loss_rel_err"] <= 1e-4 and r["grad_rel_l2"] <= 1e-3

    bf = res["correctness"]["bf16_selection"]
    assert 0.0 <= bf["agreement_rate"] <= 1.0
    # Random picks would agree ~1/m of the time; a broken bf16 path falls far below this.
    assert bf["agreement_rate"] >= 0.9
    assert bf["examples"] == plan["agree_examples"] * plan["agree_rounds"]
    assert bf["enforced"] is False and bf["not_enforced_reason"] and bf["passed"] is True
    assert 0.0 <= bf["near_tie_share"] <= 1.0 and bf["mean_regret_nats"] >= 0.0

    rows = res["speed"]["rows"]
    expected = len(plan["models"]) * len(plan["precisions"]) * len(plan["channels_last"]) * (
        2 + 2 * len(plan["ms"]))
    assert len(rows) == expected
    for r in rows:
        assert r["status"] == "ok", r
        assert r["n"] == plan["reps"] and _positive(r["median_ms"])
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
    ratios = res["speed"]["ratios"]
    assert len(ratios) == len(plan["precisions"]) * len(plan["channels_last"]) * len(plan["ms"])
    for r in ratios:
        assert _positive(r["efficient_over_bound"]) and _positive(r["efficient_over_naive"])
        assert _positive(r["bound_ms"])

    cert = res["certification"]["rows"]
    assert [r["batch"] for r in cert] == list(plan["certify_batches"])
    assert all(_positive(r["median_samples_per_s"]) and r["n"] == plan["certify_reps"]
               for r in cert)
    assert res["skipped"] == []

    md = (out / "gpu_check.md").read_text()
    for heading in ("fp32 correctness", "bf16 selection agreement", "Step time", "Ratios",
                    "Certification throughput"):
        assert heading in md
    assert "**PASSED**" in md


def test_exit_status_is_one_when_a_correctness_check_fails(gpu_check):
    ok = {"correctness": {"fp32_device_vs_cpu": {"passed": True},
                          "bf16_selection": {"passed": True}}}
    assert gpu_check.exit_status(ok) == 0
    bad = json.loads(json.dumps(ok))
    bad["correctness"]["bf16_selection"]["passed"] = False
    assert gpu_check.exit_status(bad) == 1
    assert gpu_check.exit_status({"correctness": {}}) == 1  # a check that never ran fails


def test_selection_stats_and_fp32_comparison_judge_correctly(gpu_check):
    l32 = torch.tensor([[1.0, 2.0, 0.5], [0.0, 2.005, 3.0]])  # picks 0, 1 (near-tie), 1
    other = torch.tensor([[1.0, 2.0, 0.5], [0.0, 2.01, 3.0]])  # picks 0, 1, 1
    s = gpu_check.selection_stats(l32, other)
    assert s["agreement_rate"] == 1.0 and s["near_tie_share"] == pytest.approx(1 / 3)
    flipped = torch.tensor([[1.0, 2.0, 0.5], [0.0, 1.99, 3.0]])  # example 1 flips to copy 0
    s = gpu_check.selection_stats(l32, flipped)
    assert s["agreement_rate"] == pytest.approx(2 / 3)
    assert s["agreement_without_near_ties"] == 1.0
    assert s["max_regret_nats"] == pytest.approx(0.005, abs=1e-6)

    grads = [torch.ones(3, dtype=torch.double)]
    ref = {"loss": 2.0, "worst": torch.tensor([0, 1]), "losses": l32[:, :2], "grads": grads}
    same = gpu_check.compare_fp32(ref, dict(ref))
    assert same["passed"] is True and same["grad_rel_l2"] == 0.0
    off = gpu_check.compare_fp32(ref, {**ref, "grads": [grads[0] * 1.01]})
    assert off["passed"] is False and off["grad_rel_l2"] == pytest.approx(0.01)
    moved = gpu_check.compare_fp32(ref, {**ref, "worst": torch.tensor([0, 0])})
    assert moved["passed"] is False and moved["selection_agreement"] == 0.5
    assert moved["smallest_cpu_top2_gap_where_flipped"] == pytest.approx(0.005, abs=1e-6)


def test_full_plan_fits_the_issue(gpu_check):
    p = gpu_check.DEVICE_PLAN
    assert p.models[0] == "resnet110" and p.batch == 256 and p.ms == (4, 10)
    assert p.reps >= 20 and p.warmup >= 1
    assert set(p.precisions) == {"fp32", "bf16"} and set(p.channels_last) == {False, True}
    assert all(400 <= b <= 1000 for b in p.certify_batches)
    assert p.budget_s + gpu_check.HARD_STOP_GRACE_S < 8 * 60


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_full_run_without_cuda_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and "--tiny" in proc.stderr


def test_an_error_in_a_phase_is_recorded_and_the_run_goes_on(gpu_check, tmp_path, monkeypatch):
    def broken(plan, device):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def also_broken(plan, device):
        raise ValueError("bf16 went wrong")

    monkeypatch.setattr(gpu_check, "check_fp32", broken)
    monkeypatch.setattr(gpu_check, "check_bf16", also_broken)
    plan = gpu_check.replace(gpu_check.TINY_PLAN, models=())  # no speed or certification
    result = gpu_check.run(plan, torch.device("cpu"), tmp_path, "tiny")
    fp = result["correctness"]["fp32_device_vs_cpu"]
    assert fp["passed"] is False and fp["error"].startswith("RuntimeError: CUDA error")
    bf = result["correctness"]["bf16_selection"]  # the run went on after the first error
    assert bf["passed"] is False and bf["error"].startswith("ValueError: bf16 went wrong")
    assert result["exit_status"] == 1
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["exit_status"] == 1
    md = (tmp_path / "gpu_check.md").read_text()
    assert "fp32_device_vs_cpu: ERROR" in md and "**FAILED**" in md


def test_the_hard_time_limit_stops_the_run_and_keeps_what_it_has(gpu_check, tmp_path,
                                                                  monkeypatch):
    import time

    monkeypatch.setattr(gpu_check, "check_fp32", lambda plan, device: time.sleep(30))
    # A budget whose hard limit (budget + grace, from the script's start) is 1 s from now.
    budget = time.monotonic() - gpu_check._T0 - gpu_check.HARD_STOP_GRACE_S + 1
    plan = gpu_check.replace(gpu_check.TINY_PLAN, models=(), budget_s=budget)
    t0 = time.monotonic()
    result = gpu_check.run(plan, torch.device("cpu"), tmp_path, "tiny")
    assert time.monotonic() - t0 < 20
    assert result["stopped"].startswith("hard time limit")
    assert result["exit_status"] == 1  # the correctness checks never finished
    assert json.loads((tmp_path / "gpu_check.json").read_text())["stopped"] == result["stopped"]
