"""benchmarks/gpu_check.py runs (``--tiny``, on the CPU), fails wrong objectives and broken
determinism, and the library needs no Ray.

The accelerator machine the GPU check is prepared for has torch and torchvision but no Ray, so
the library parts that need no Ray must not import it, and the check must run on them alone.
Each planted fault (``--plant``) runs only the phase that must catch it (``--phases``).
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


def _tiny(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    return _tiny(out), out


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


def test_tiny_run_passes_and_reports_every_measurement(tiny_run, gpu_check):
    proc, out = tiny_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "gpu_check.json").read_text())
    assert res["schema"] == "maxup.gpu_check/2" and res["mode"] == "tiny"
    assert res["exit_status"] == 0 and "stopped" not in res
    # Nothing beyond torch/torchvision/numpy was needed (PyYAML: the engine's config module,
    # which the determinism phase imports).
    assert not any(v for k, v in res["modules"].items() if k != "yaml_imported"), res["modules"]
    plan = res["plan"]

    assert plan["phases"] == list(gpu_check.PHASES) and plan["plant"] is None
    assert set(res["phase_s"]) >= {"fp32", "bf16", "determinism"}

    fp = res["correctness"]["fp32_vs_float64"]
    assert fp["passed"] is True and fp["failed"] == []
    assert fp["compared"] == "cpu fp32 vs cpu float64" and fp["device_note"]
    for mode in ("efficient", "naive"):
        r = fp["modes"][mode]
        assert r["passed"] is True and r["failed"] == []
        erm = max(r["erm_grad_rel_l2"])
        assert len(r["erm_grad_rel_l2"]) == plan["check_m"]
        # fp32 errs (> 0) but far below 1e-3; the objective sits within 2x of plain ERM's.
        assert 0 < erm < 1e-3 and 0 < r["grad_rel_l2"] <= r["grad_allowed"]
        assert r["grad_allowed"] == pytest.approx(2 * erm + 1e-6, rel=1e-6)
        assert r["grad_headroom"] > 1.2  # comfortably, not by a hair
        assert r["loss_rel_err"] <= r["loss_allowed"] < 1e-4
        # This script's own fp32 MaxUp does the same arithmetic as the library's.
        assert r["fp32_reference_grad_rel_l2"] == pytest.approx(r["grad_rel_l2"], rel=1e-3)
        assert r["selection_margin_nats"] >= 1e-3 and r["max_copy_loss_err_nats"] < 1e-4
        assert r["judged_examples"] + r["near_ties_not_judged"] == r["examples"] == 16
        assert r["judged_examples"] >= 12 and r["judged_mismatches"] == 0
        assert r["selection_agreement"] == 1.0

    bf = res["correctness"]["bf16_selection"]
    assert 0.0 <= bf["agreement_rate"] <= 1.0
    # Random picks would agree ~1/m of the time; a broken bf16 path falls far below this.
    assert bf["agreement_rate"] >= 0.9 and bf["agreement_without_near_ties"] >= 0.9
    assert bf["examples"] == plan["agree_examples"] * plan["agree_rounds"]
    assert bf["enforced"] is False and bf["not_enforced_reason"] and bf["passed"] is True
    assert 0.0 <= bf["near_tie_share"] <= 1.0 and bf["mean_regret_nats"] >= 0.0
    assert bf["non_tied_examples"] == round(bf["examples"] * (1 - bf["near_tie_share"]))
    assert bf["agreement_min"] == 0.99 and bf["regret_max_nats"] == 1e-3

    det = res["correctness"]["determinism"]
    assert det["passed"] is True and det["statuses"] == ["completed", "completed"]
    assert det["weights_identical"] and det["histories_identical"]
    assert det["model_tensors"] > 0 and det["differing_tensors"] == 0
    assert det["config"]["train"]["deterministic"] is True
    for run in det["runs"]:
        assert (Path(run) / "checkpoints" / "last.pt").is_file()
        assert Path(run).parent == out / "determinism"

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
    for heading in ("fp32 correctness vs float64", "bf16 selection", "Determinism", "Step time",
                    "Ratios", "Certification throughput"):
        assert heading in md
    assert "**PASSED**" in md


PLANTED = [("mean-copy", "fp32", "fp32_vs_float64", {"loss", "gradient"}),
           ("random-copy", "fp32", "fp32_vs_float64", {"loss", "gradient", "selection"}),
           ("nondeterministic", "determinism", "determinism", {"weights"})]


@pytest.mark.parametrize(("plant", "phase", "key", "must_fail"), PLANTED,
                         ids=[p[0] for p in PLANTED])
def test_a_planted_fault_fails_the_check_and_is_named(tmp_path, plant, phase, key, must_fail):
    proc = _tiny(tmp_path, "--phases", phase, "--plant", plant)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"FAILED: {key}" in proc.stdout and f"PLANTED: {plant}" in proc.stdout
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["exit_status"] == 1 and res["plan"]["plant"] == plant
    assert list(res["correctness"]) == [key]  # only the chosen phase ran
    r = res["correctness"][key]
    assert r["passed"] is False and "error" not in r
    if key == "determinism":
        assert must_fail <= set(r["failed"]) and r["differing_tensors"] > 0
        assert r["statuses"] == ["completed", "completed"]
        return
    for mode in ("efficient", "naive"):
        m = r["modes"][mode]
        assert must_fail <= set(m["failed"]), (mode, m["failed"])
        # Far outside, not by a hair: a wrong objective's gradient is off by tens of percent.
        assert m["grad_rel_l2"] > 0.1 and m["grad_headroom"] < 0.01
        assert m["loss_rel_err"] > 100 * m["loss_allowed"]
        if "selection" in must_fail:
            assert m["judged_mismatches"] >= 3


@pytest.mark.slow
def test_compile_keeps_the_correctness_and_determinism_verdicts(tmp_path):
    """``--compile``: phase 1's objective and phase 3's trainings run with the model under
    torch.compile (train.compile) and must pass the same criteria; compile seconds are a
    timing, not a difference between the two runs."""
    proc = _tiny(tmp_path, "--phases", "fp32,determinism", "--compile",
                 "--det-dir", str(tmp_path / "det"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    fp32 = result["correctness"]["fp32_vs_float64"]
    det = result["correctness"]["determinism"]
    assert fp32["compiled"] is True and fp32["passed"] is True
    assert det["config"]["train"]["compile"] is True and det["passed"] is True
    assert det["weights_identical"] and det["histories_identical"]
    assert "compile_s" in det["ignored_fields"]


def test_exit_status_is_one_when_an_enforced_check_fails(gpu_check):
    ok = {"correctness": {"fp32_vs_float64": {"passed": True},
                          "bf16_selection": {"passed": True}, "determinism": {"passed": True}}}
    assert gpu_check.exit_status(ok) == 0
    for key in ok["correctness"]:
        bad = json.loads(json.dumps(ok))
        bad["correctness"][key]["passed"] = False
        assert gpu_check.exit_status(bad) == 1, key
    assert gpu_check.exit_status({"correctness": {}}) == 1  # a check that never ran fails
    # Only the chosen phases' checks are required.
    only_fp32 = {"plan": {"phases": ["fp32"]},
                 "correctness": {"fp32_vs_float64": {"passed": True}}}
    assert gpu_check.exit_status(only_fp32) == 0
    only_fp32["plan"]["phases"].append("determinism")
    assert gpu_check.exit_status(only_fp32) == 1


def test_bf16_selection_is_judged_without_near_ties_and_by_regret(gpu_check):
    l32 = torch.tensor([[1.0, 2.0, 0.5], [0.0, 2.005, 3.0]])  # picks 0, 1 (near-tie), 1
    other = torch.tensor([[1.0, 2.0, 0.5], [0.0, 2.01, 3.0]])  # picks 0, 1, 1
    s = gpu_check.selection_stats(l32, other)
    assert s["agreement_rate"] == 1.0 and s["near_tie_share"] == pytest.approx(1 / 3)
    assert s["non_tied_examples"] == 2
    flipped = torch.tensor([[1.0, 2.0, 0.5], [0.0, 1.99, 3.0]])  # example 1 flips to copy 0
    s = gpu_check.selection_stats(l32, flipped)
    assert s["agreement_rate"] == pytest.approx(2 / 3)
    assert s["agreement_without_near_ties"] == 1.0
    assert s["max_regret_nats"] == pytest.approx(0.005, abs=1e-6)
    verdict = gpu_check.judge_bf16(s, enforced=True)  # a near-tie flip costs 0.0017 nats
    assert verdict["meets_agreement"] and not verdict["meets_regret"]
    assert verdict["passed"] is False and verdict["failed"] == ["mean_regret"]
    assert gpu_check.judge_bf16(s, enforced=False)["passed"] is True  # reported, not enforced
    # Example 2's copies differ by 3e-4 nats: a flip there is a near-tie costing 1e-4 on average.
    s = gpu_check.selection_stats(torch.tensor([[1.0, 2.0, 3.0], [0.0, 2.005, 3.0003]]),
                                  torch.tensor([[1.0, 2.0, 3.0005], [0.0, 2.005, 3.0003]]))
    assert s["agreement_rate"] == pytest.approx(2 / 3) and s["non_tied_examples"] == 1
    assert s["agreement_without_near_ties"] == 1.0
    assert s["mean_regret_nats"] == pytest.approx(1e-4, abs=1e-6)
    assert gpu_check.judge_bf16(s, enforced=True)["passed"] is True
    wrong = gpu_check.selection_stats(l32, torch.tensor([[1.0, 2.0, 0.5], [5.0, 2.01, 3.0]]))
    assert wrong["agreement_without_near_ties"] == 0.5  # example 0 (gap 1 nat) flipped
    assert "agreement_without_near_ties" in gpu_check.judge_bf16(wrong, enforced=True)["failed"]


def _result(losses, grads, loss=2.0):
    return {"loss": loss, "worst": losses.argmax(0), "losses": losses.double(),
            "grads": [g.double() for g in grads]}


def test_judge_mode_scales_with_erm_and_judges_selection_beyond_the_margin(gpu_check):
    losses = torch.tensor([[1.0, 2.0, 0.5], [0.0, 2.0005, 3.0]], dtype=torch.double)
    g = [torch.ones(3, dtype=torch.double), torch.ones(2, dtype=torch.double)]
    ref64 = _result(losses, g)
    erm64 = [{"loss": 2.0, "grads": g}] * 2
    erm32 = [{"loss": 2.0 + 1e-6, "grads": [g[0] * (1 + 1e-4), g[1]]},
             {"loss": 2.0, "grads": [g[0] * (1 + 3e-4), g[1]]}]
    erm_err = 3e-4 * math.sqrt(3) / math.sqrt(5)  # the worse copy's relative L2 error
    ref32 = _result(losses.float(), g)

    def judge(dev):
        return gpu_check.judge_mode(ref64, dev, ref32, erm64, erm32)

    same = judge(_result(losses, g))
    assert same["passed"] is True and same["grad_rel_l2"] == 0.0
    assert same["grad_allowed"] == pytest.approx(2 * erm_err + 1e-6)
    assert same["loss_allowed"] == pytest.approx(2 * 1e-6 / 2 + 1e-6)
    assert same["judged_examples"] == 2 and same["near_ties_not_judged"] == 1  # gap 5e-4
    # Within 2x of ERM's error: passes; beyond: the gradient fails.
    within = judge(_result(losses, [g[0] * (1 + 5e-4), g[1]]))
    assert within["passed"] is True and within["grad_headroom"] > 1
    beyond = judge(_result(losses, [g[0] * (1 + 8e-4), g[1]]))
    assert beyond["failed"] == ["gradient"] and beyond["grad_headroom"] < 1
    assert judge({**_result(losses, g), "loss": 2.01})["failed"] == ["loss"]
    # A flip at the near-tie (gap 5e-4 < 1e-3 nats) is reported, not judged...
    tie = judge({**_result(losses, g), "worst": torch.tensor([0, 0, 1])})
    assert tie["passed"] is True and tie["near_tie_mismatches"] == 1
    assert tie["smallest_float64_gap_where_flipped"] == pytest.approx(5e-4, abs=1e-9)
    # ...a flip of a clear winner (gap 2.5 nats) fails the selection.
    clear = judge({**_result(losses, g), "worst": torch.tensor([0, 1, 0])})
    assert clear["failed"] == ["selection"] and clear["judged_mismatches"] == 1
    # The margin grows with the fp32 per-copy loss error: 2 x 1e-3 covers a 1.5e-3 gap.
    wide = gpu_check.judge_mode(ref64, _result(losses, g), _result(losses + 1e-3, g), erm64,
                                erm32)
    assert wide["selection_margin_nats"] == pytest.approx(2e-3)
    # An exactly-zero ERM error still leaves the floor.
    exact = gpu_check.judge_mode(ref64, _result(losses, [g[0] * (1 + 5e-7), g[1]]), ref32,
                                 erm64, erm64)
    assert exact["grad_allowed"] == pytest.approx(1e-6) and exact["passed"] is True


def test_reference_maxup_differentiates_the_worst_copy_only(gpu_check):
    # Without BatchNorm both modes equal "mean over examples of the worst copy's loss".
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3)).double()
    xs, ts = torch.randn(8, 6, dtype=torch.double), torch.eye(3, dtype=torch.double)[
        torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])]
    m, b = 2, 4
    for mode in ("efficient", "naive"):
        r = gpu_check.reference_maxup(model, xs, ts, m, mode, chunk=1)
        per = -(ts * torch.log_softmax(model(xs), -1)).sum(-1).view(m, b)
        assert torch.equal(r["worst"], per.argmax(0))
        assert r["loss"] == pytest.approx(float(per.detach().max(0).values.mean()))
        model.zero_grad()
        per.max(0).values.mean().backward()
        expected = [p.grad.clone() for p in model.parameters()]
        assert gpu_check.rel_l2(r["grads"], expected) < 1e-12


def test_compare_runs_finds_a_changed_tensor_and_ignores_timing(gpu_check):
    a = {"w": torch.ones(3), "b": torch.zeros(2)}
    hist = [{"epoch": 1, "train_loss": 1.5, "wall_s": 3.0, "images_per_s": 10.0}]
    timed = [{**hist[0], "wall_s": 4.0, "images_per_s": 9.0}]
    same = gpu_check.compare_runs(a, {k: v.clone() for k, v in a.items()}, hist, timed)
    assert same["weights_identical"] and same["histories_identical"]
    b = {"w": torch.ones(3) + torch.tensor([0.0, 1e-7, 0.0]), "b": torch.zeros(2)}
    diff = gpu_check.compare_runs(a, b, hist, [{**hist[0], "train_loss": 1.5000001}])
    assert not diff["weights_identical"] and diff["first_differing_tensors"] == ["w"]
    assert diff["max_abs_difference"] > 0
    assert diff["first_history_difference"]["field"] == "train_loss"


def test_an_unknown_phase_is_a_usage_error(tmp_path):
    proc = _tiny(tmp_path, "--phases", "fp32,speedy")
    assert proc.returncode == 2 and "speedy" in proc.stderr


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
    plan = gpu_check.replace(gpu_check.TINY_PLAN, phases=("fp32", "bf16"))
    result = gpu_check.run(plan, torch.device("cpu"), tmp_path, "tiny")
    fp = result["correctness"]["fp32_vs_float64"]
    assert fp["passed"] is False and fp["error"].startswith("RuntimeError: CUDA error")
    bf = result["correctness"]["bf16_selection"]  # the run went on after the first error
    assert bf["passed"] is False and bf["error"].startswith("ValueError: bf16 went wrong")
    assert result["exit_status"] == 1
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["exit_status"] == 1
    md = (tmp_path / "gpu_check.md").read_text()
    assert "fp32_vs_float64: ERROR" in md and "**FAILED**" in md


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
