"""The cost model, device profiles, cluster plans, longest-first order and the priced dry run.

Expected values are computed here by hand from the formula (epochs × steps × step time), not
read back from the code under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from maxup.cli import main
from maxup.errors import ConfigError, ProfileError, UsageError
from maxup.platform import cost, plan
from maxup.platform.space import REPO_ROOT, load_space

DEVICE = "Test Device 9000"


def _profile_doc(models: dict, **kw) -> dict:
    return {"schema": "maxup.profile/1", "device": kw.get("device", DEVICE),
            "kind": kw.get("kind", "cpu"), "source": "hand-made for a test", "estimate": False,
            "default_for": kw.get("default_for"), "trial_overhead_s": kw.get("overhead", 0.0),
            "models": models}


def _write_profile(folder: Path, doc: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cost.device_slug(doc['device'])}.json"
    path.write_text(json.dumps(doc))
    return path


def _space(tmp_path: Path, body: str, name: str = "c") -> Path:
    base = (f"name: {name}\nbase:\n  model: {{name: small_cnn}}\n  data: {{name: digits}}\n"
            "  train: {epochs: 3, batch_size: 100, device: cpu}\n  maxup: {warmup_epochs: 1}\n")
    if "seeds" not in body:
        body += "seeds: 1\n"
    path = tmp_path / f"{name}.yaml"
    path.write_text(base + body)
    return path


# --------------------------------------------------------------------------- the formula

def test_trial_cost_is_epochs_times_steps_times_step_time(tmp_path):
    # digits: 1,257 train and 540 test images of 1×8×8. Batch 100 → 13 steps of 100 images
    # (the last one partial, priced per image: 1,300 image slots, the engine's ceil rule).
    fwd_s, step_s, batch = 0.02, 0.05, 50  # per batch of 50 in the profile
    prof = cost.parse_profile(_profile_doc(
        {"small_cnn@1x8x8": {"batch": batch, "fwd_s": fwd_s, "step_s": step_s}},
        overhead=1.5), "t")
    spec = load_space(_space(tmp_path, "grid:\n  maxup.m: [1, 4]\n"))
    m1, m4 = spec.expand()[:2] if spec.expand()[0].axes["maxup.m"] == 1 else spec.expand()[1::-1]
    fwd_img, step_img = fwd_s / batch, step_s / batch
    steps, test_n = math.ceil(1257 / 100), 540
    eval_s = test_n * fwd_img
    epoch_m1 = steps * 100 * step_img + eval_s
    epoch_m4 = steps * 100 * (step_img + 4 * fwd_img) + eval_s
    assert cost.estimate(m1.config, prof).seconds == pytest.approx(1.5 + 3 * epoch_m1)
    # warm-up epoch at m = 1, then 2 epochs at m = 4
    assert cost.estimate(m4.config, prof).seconds == pytest.approx(1.5 + epoch_m1 + 2 * epoch_m4)


def test_other_input_size_is_scaled_by_pixels_and_unknown_models_are_unpriced(tmp_path):
    prof = cost.parse_profile(_profile_doc(
        {"small_cnn@1x16x16": {"batch": 10, "fwd_s": 0.4, "step_s": 0.8}}), "t")
    timing, scale = prof.timing("small_cnn", (1, 8, 8))
    assert scale == pytest.approx(64 / 256) and timing.step_s == 0.8
    assert prof.timing("resnet110", (3, 32, 32)) is None
    spec = load_space(_space(tmp_path, "grid:\n  model.name: [mlp]\n"))
    est = cost.estimate(spec.expand()[0].config, prof)
    assert est.seconds is None and "mlp" in est.note


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(schema="maxup.profile/2"), "schema"),
    (lambda d: d.update(kind="tpu"), "kind"),
    (lambda d: d.update(source=""), "source"),
    (lambda d: d["models"].update(bad={"batch": 1, "fwd_s": 1, "step_s": 1}), "models.bad"),
    (lambda d: d["models"]["small_cnn@1x8x8"].update(fwd_s=-1), "models.small_cnn@1x8x8.fwd_s"),
    (lambda d: d["models"]["small_cnn@1x8x8"].update(batch=0), "models.small_cnn@1x8x8.batch"),
])
def test_corrupt_profile_is_one_line_naming_the_field(tmp_path, mutate, field):
    doc = _profile_doc({"small_cnn@1x8x8": {"batch": 8, "fwd_s": 0.1, "step_s": 0.2}})
    mutate(doc)
    path = _write_profile(tmp_path, doc)
    with pytest.raises(ProfileError) as exc:
        cost.load_profile(path)
    assert f"{field}: got" in str(exc.value) and "\n" not in str(exc.value)
    path.write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        cost.load_profile(path)


def test_find_profile_prefers_the_device_and_says_when_it_falls_back(tmp_path):
    user, shipped = tmp_path / "user", tmp_path / "shipped"
    _write_profile(shipped, _profile_doc({}, device="Fallback CPU", default_for="cpu"))
    prof, note = cost.find_profile(DEVICE, "cpu", [user, shipped])
    assert prof.device == "Fallback CPU" and DEVICE in note and "hand-made" in note
    _write_profile(user, _profile_doc({}))
    prof, note = cost.find_profile(DEVICE, "cpu", [user, shipped])
    assert prof.device == DEVICE and note is None
    with pytest.raises(ProfileError, match="no default gpu profile"):
        cost.find_profile("Some GPU", "gpu", [user, shipped])


def test_shipped_profiles_are_valid_and_say_where_their_figures_come_from():
    files = sorted(cost.SHIPPED_DIR.glob("*.json"))
    profiles = [cost.load_profile(p) for p in files]
    assert {p.default_for for p in profiles} >= {"cpu", "gpu"}
    for p in profiles:
        assert p.source
        if p.kind == "gpu" and p.estimate:  # derived: says so, and from what
            assert "ESTIMATE" in p.source and "H200" in p.source
            assert all(t.basis for t in p.models.values())
        elif p.kind == "gpu":  # measured: says by what, and how its other entries were made
            assert "measured by `maxup calibrate`" in p.source
            assert p.device == "NVIDIA H200"


# --------------------------------------------------------------------------- scheduling

def test_schedule_and_longest_first_by_hand():
    # 2 slots, durations 3, 1, 1, 3 in file order: slot A 3+1(4th→?)... computed by hand:
    # t=0: A←3 (ends 3), B←1 (ends 1); t=1: B←1 (ends 2); t=2: B←3 (ends 5) → makespan 5
    placed = cost.schedule([3.0, 1.0, 1.0, 3.0], slots=2)
    assert [(p.slot, p.start, p.end) for p in placed] == [(0, 0, 3), (1, 0, 1), (1, 1, 2),
                                                           (1, 2, 5)]
    order = cost.longest_first(range(4), [3.0, 1.0, 1.0, 3.0], ["a", "b", "b", "a"])
    assert order == [0, 3, 1, 2]
    longest = cost.schedule([[3.0, 1.0, 1.0, 3.0][i] for i in order], slots=2)
    assert max(p.end for p in longest) == 4  # 3+1 on each slot
    # equal costs: every arm's first trial before any arm's second
    order = cost.longest_first(range(4), [2.0] * 4, ["x", "x", "y", "y"])
    assert order == [0, 2, 1, 3]
    assert cost.longest_first(range(3), [None, 1.0, 5.0], ["a", "b", "c"]) == [2, 1, 0]


def test_remaining_wall_with_running_trials():
    # slot 1 busy 4 s more, slot 2 free: pending 3, 3 → slot 2 0–3, then slot 2 3–6 → 6
    assert cost.remaining_wall([4.0], [3.0, 3.0], 2) == 6.0
    assert cost.remaining_wall([4.0, 1.0], [], 2) == 4.0


# --------------------------------------------------------------------------- cluster plans

CLUSTER = """max_workers: 5
head_node_type: head
available_node_types:
  head: {resources: {CPU: 0, GPU: 0}, max_workers: 0, node_config: {InstanceType: m5.large}}
  small: {resources: {CPU: 4, GPU: 1}, max_workers: 3, node_config: {InstanceType: g5.xlarge}}
  big: {resources: {CPU: 32, GPU: 4}, max_workers: 4, node_config: {InstanceType: p4d.24xlarge}}
"""


def _gpu_space(tmp_path, concurrency=100):
    return load_space(_space(tmp_path, "grid:\n  maxup.m: [1, 4]\nseeds: 3\nresources: "
                             f"{{cpus_per_trial: 4, gpus_per_trial: 1}}\nconcurrency: "
                             f"{concurrency}\n"))


def test_cluster_target_counts_slots_from_node_types_and_max_workers(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER)
    spec = _gpu_space(tmp_path)
    target = plan.cluster_target(path, spec, spec.expand())
    # small: 3 nodes × 1 slot; big: the 2 nodes left of max_workers 5 × min(32/4, 4/1) = 8
    assert target.slots == ["NVIDIA A10G"] * 3 + ["NVIDIA A100-SXM4-40GB"] * 8
    spec = _gpu_space(tmp_path, concurrency=2)
    assert len(plan.cluster_target(path, spec, spec.expand()).slots) == 2


def test_cluster_plan_refusals(tmp_path):
    spec = _gpu_space(tmp_path)
    with pytest.raises(UsageError, match="--plan-for"):
        plan.cluster_target(tmp_path / "nope.yaml", spec, spec.expand())
    cpu_only = tmp_path / "cpu.yaml"
    cpu_only.write_text("available_node_types:\n  w: {resources: {CPU: 8}, max_workers: 2}\n")
    with pytest.raises(ConfigError) as exc:
        plan.cluster_target(cpu_only, spec, spec.expand())
    assert exc.value.field == "cpu.yaml: available_node_types" and "GPU" in exc.value.allowed
    unknown = tmp_path / "odd.yaml"
    unknown.write_text("available_node_types:\n  w: {resources: {CPU: 8, GPU: 1}, "
                       "max_workers: 2, node_config: {InstanceType: x9.huge}}\n")
    with pytest.raises(ConfigError, match="InstanceType: got 'x9.huge'"):
        plan.cluster_target(unknown, spec, spec.expand())


def test_price_by_hand_on_a_cluster(tmp_path):
    prof_dir = tmp_path / "profiles"
    t_small = {"batch": 100, "fwd_s": 0.1, "step_s": 0.3}
    _write_profile(prof_dir, {**_profile_doc({"small_cnn@1x8x8": t_small}, kind="gpu"),
                              "device": "NVIDIA A10G", "default_for": "gpu"})
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER.replace("max_workers: 4", "max_workers: 0"))  # 3 A10G slots
    spec = _gpu_space(tmp_path)
    trials = spec.expand()
    target = plan.cluster_target(path, spec, trials)
    priced = plan.price(spec, trials, target, {}, dirs=[prof_dir])
    steps, fwd, step = 13, 0.1 / 100, 0.3 / 100
    e1 = steps * 100 * step + 540 * fwd
    e4 = steps * 100 * (step + 4 * fwd) + 540 * fwd
    m1, m4 = 3 * e1, e1 + 2 * e4
    assert priced.compute_s == pytest.approx(3 * m1 + 3 * m4)
    assert priced.wall_s == pytest.approx(m1 + m4)  # 3 slots: each gets one m4, then one m1
    assert [t.axes["maxup.m"] for t in priced.trials] == [4, 4, 4, 1, 1, 1]


# --------------------------------------------------------------------------- the dry run

def _tree(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*")) if root.exists() else []


def test_table3_dry_run_on_this_cpu_machine_plans_for_the_cluster(tmp_path, capsys,
                                                                   monkeypatch):
    import maxup.cli.sweep as sweep_cli

    monkeypatch.setattr(sweep_cli.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(sweep_cli, "local_gpus", lambda: 0.0)
    monkeypatch.chdir(tmp_path)
    storage = tmp_path / "store"
    rc = main(["sweep", str(REPO_ROOT / "search_spaces/table3_cifar10.yaml"), "--dry-run",
               "--storage", str(storage)])
    out = capsys.readouterr().out
    assert rc == 0 and not storage.exists() and _tree(tmp_path) == []
    assert "needs a cluster" in out and "cluster.yaml (8 slots" in out
    cost_line = next(line for line in out.splitlines() if line.startswith("cost: "))
    assert "GPU-hours" in cost_line and "wall-clock" in cost_line and "30 trial(s)" in cost_line
    assert "ESTIMATE" in out  # the A10G figures are estimates and the plan says so
    # GPU-hours ≥ wall-clock × … : Σ trial time / 8 slots ≤ wall ≤ Σ trial time
    hours = float(cost_line.split(" trial(s) to train, ")[1].split()[0])
    assert hours > 0


def test_plan_for_refusals_are_one_line_exit_2(tmp_path, capsys):
    space = _space(tmp_path, "resources: {gpus_per_trial: 1}\n")
    cpu_only = tmp_path / "cpu.yaml"
    cpu_only.write_text("available_node_types:\n  w: {resources: {CPU: 8}, max_workers: 2}\n")
    for plan_for, needle in ((tmp_path / "missing.yaml", "--plan-for"),
                             (cpu_only, "available_node_types")):
        rc = main(["sweep", str(space), "--dry-run", "--plan-for", str(plan_for),
                   "--storage", str(tmp_path / "s")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and needle in err and "\n" not in err
    assert not (tmp_path / "s").exists()


def test_corrupt_user_profile_refuses_the_dry_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MAXUP_PROFILES", str(tmp_path / "p"))
    bad = _profile_doc({}, device=cost.cpu_name())
    bad["kind"] = "abacus"
    _write_profile(tmp_path / "p", bad)
    rc = main(["sweep", str(_space(tmp_path, "")), "--dry-run", "--storage",
               str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "kind: got 'abacus'" in err and "\n" not in err
    assert not (tmp_path / "s").exists()


def test_sweep_overrides_apply_to_every_trial_before_identity(tmp_path, capsys):
    from maxup import identity

    path = _space(tmp_path, "grid:\n  maxup.m: [1, 4]\n")
    spec = load_space(path)
    plan.apply_overrides(spec, {"train.epochs": 2, "data.root": "/elsewhere"})
    trials = spec.expand()
    assert all(t.config["train"]["epochs"] == 2 for t in trials)
    plain = load_space(path).expand()
    # epochs change the identity; data.root does not
    assert {t.trial_id for t in trials}.isdisjoint({t.trial_id for t in plain})
    spec2 = load_space(path)
    plan.apply_overrides(spec2, {"data.root": "/elsewhere"})
    assert [t.trial_id for t in spec2.expand()] == [identity.trial_id(t.config) for t in plain]
    with pytest.raises(ConfigError, match="maxup.m"):
        plan.apply_overrides(load_space(path), {"maxup.m": 2})
    rc = main(["sweep", str(path), "--dry-run", "--train.epochs=2", "--storage",
               str(tmp_path / "s")])
    assert rc == 0 and trials[0].trial_id in capsys.readouterr().out
    rc = main(["sweep", str(path), "--dry-run", "--train.epochz=2"])
    assert rc == 2 and "train.epochz" in capsys.readouterr().err


def test_preflight_refuses_missing_data_in_one_line_before_anything(tmp_path, capsys):
    path = tmp_path / "f.yaml"
    path.write_text("name: f\nbase:\n  model: {name: small_cnn}\n  data: {name: fashion_mnist}\n"
                    "  train: {epochs: 1, device: cpu}\ngrid:\n  maxup.m: [1, 4]\nseeds: 1\n")
    storage = tmp_path / "s"
    for extra in (["--dry-run"], []):
        rc = main(["sweep", str(path), *extra, f"--data.root={tmp_path / 'nodata'}",
                   "--storage", str(storage)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err and "nodata" in err
        assert "dataset-fashion-mnist" in err and "needed by 2 trials" in err
    assert not storage.exists()


def test_finished_records_on_the_target_device_refine_the_estimate(tmp_path):
    from maxup import records

    fwd_s, step_s = 0.02, 0.05
    prof = cost.parse_profile(_profile_doc(
        {"small_cnn@1x8x8": {"batch": 100, "fwd_s": fwd_s, "step_s": step_s}},
        overhead=2.0), "t")
    spec = load_space(_space(tmp_path, "grid:\n  maxup.m: [1, 4]\nseeds: 2\n"))
    trials = spec.expand()
    m1 = next(t for t in trials if t.axes["maxup.m"] == 1)
    epoch_m1 = 13 * 100 * step_s / 100 + 540 * fwd_s / 100  # by hand, as above
    # an m=1 trial measured 3× its prediction over its 2 finished epochs, on DEVICE
    hist = [{"epoch": e, "wall_s": 3 * epoch_m1} for e in (1, 2)]
    rec = records.parse_record(records.build_record(
        config=m1.config, history=hist, status="running", timings={},
        env={"device_name": DEVICE}))
    assert cost.refinement([rec], prof) == {"small_cnn": pytest.approx(3.0),
                                            "*": pytest.approx(3.0)}
    other = records.parse_record({**rec.to_dict(), "environment": {"device_name": "other"}})
    assert cost.refinement([other], prof) == {}
    # the fallback case: another device's profile, corrected by the target's own records
    assert cost.refinement([other], prof, "other")["small_cnn"] == pytest.approx(3.0)
    est = cost.estimate(m1.config, prof)
    refined = cost.refined(est, m1.config, {"small_cnn": 3.0}, prof.trial_overhead_s)
    assert refined.seconds == pytest.approx(2.0 + 3 * (3 * epoch_m1))


def test_dry_run_says_when_nothing_can_be_priced(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MAXUP_PROFILES", str(tmp_path / "p"))
    _write_profile(tmp_path / "p", _profile_doc({}, device=cost.cpu_name()))  # no models
    rc = main(["sweep", str(_space(tmp_path, "")), "--dry-run", "--storage",
               str(tmp_path / "s")])
    out = capsys.readouterr().out
    assert rc == 0 and "cost: 1 trial(s) to train, none priced" in out
    assert "no figures for small_cnn" in out and not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- packing (issue 25)

PACK_SOURCE = "hand-made packing figure for a test"


def _gpu_profile(packing: dict | None = None, overhead: float = 3.0) -> cost.Profile:
    doc = _profile_doc({"small_cnn@1x8x8": {"batch": 100, "fwd_s": 0.1, "step_s": 0.3}},
                       kind="gpu", overhead=overhead)
    if packing is not None:
        doc["packing"] = packing
    return cost.parse_profile(doc, "t")


def _epochs_by_hand(m: int) -> float:
    """Three epochs of the digits space (13 steps of 100, 540 test images), warm-up 1."""
    fwd, step = 0.1 / 100, 0.3 / 100
    e1 = 13 * 100 * step + 540 * fwd
    em = 13 * 100 * (step + (m if m > 1 else 0) * fwd) + 540 * fwd
    return e1 + 2 * em


def test_trials_sharing_a_gpu_from_the_fraction_and_the_concurrency():
    assert cost.trials_sharing(0.25) == 4
    assert cost.trials_sharing(0.3) == 3  # 3 × 0.3 fit in one GPU, a 4th does not
    assert cost.trials_sharing(1 / 3) == 3 and cost.trials_sharing(0.5) == 2
    assert cost.trials_sharing(1) == cost.trials_sharing(2) == cost.trials_sharing(0) == 1
    # only 2 trials run at once: 2 share the GPU, not 4
    assert cost.trials_sharing(0.25, slots=2) == 2
    assert cost.trials_sharing(0.25, slots=8) == 4


def test_quarter_gpu_trials_are_priced_with_the_measured_packing_factor(tmp_path):
    # the H200's figure: 4 trials together give 1.33× the throughput of one alone, so each
    # of the 4 takes 4 / 1.33 = 3.0075… times its time alone (overhead not scaled)
    prof = _gpu_profile({"4": {"factor": 1.33, "source": PACK_SOURCE}})
    spec = load_space(_space(tmp_path, "grid:\n  maxup.m: [4]\n"))
    config = spec.expand()[0].config
    alone = cost.estimate(config, prof)
    assert alone.seconds == pytest.approx(3.0 + _epochs_by_hand(4)) and alone.note is None
    packed = cost.estimate(config, prof, share=4)
    assert packed.seconds == pytest.approx(3.0 + _epochs_by_hand(4) * 4 / 1.33)
    assert packed.seconds == pytest.approx(3.0 + 3.00752 * _epochs_by_hand(4), rel=1e-5)
    assert "1.33" in packed.note and PACK_SOURCE in packed.note
    # per-epoch figure (m = 4 epochs) scaled the same way
    e4 = 13 * 100 * (0.3 / 100 + 4 * 0.1 / 100) + 540 * 0.1 / 100
    assert packed.epoch_s == pytest.approx(e4 * 4 / 1.33)


def test_without_a_measured_factor_the_estimate_states_its_assumption(tmp_path):
    config = load_space(_space(tmp_path, "grid:\n  maxup.m: [1]\n")).expand()[0].config
    by_hand = _epochs_by_hand(1)
    none = cost.estimate(config, _gpu_profile(), share=4)
    assert none.seconds == pytest.approx(3.0 + 4 * by_hand)  # no gain, not 4× throughput
    assert "no packing factor measured" in none.note and "assumed no throughput gain" in none.note
    # measured at 2 only: 4 sharing are assumed to gain nothing beyond those 2
    two = _gpu_profile({"2": {"factor": 1.5, "source": PACK_SOURCE}})
    est = cost.estimate(config, two, share=4)
    assert est.seconds == pytest.approx(3.0 + by_hand * 4 / 1.5)
    assert "not measured" in est.note and "1.5" in est.note
    # measured at 4 only: 3 sharing can't borrow it (more trials may gain more) → no gain
    four = _gpu_profile({"4": {"factor": 1.33, "source": PACK_SOURCE}})
    assert cost.estimate(config, four, share=3).seconds == pytest.approx(3.0 + 3 * by_hand)
    # a model's own factor wins over the device's
    per_model = _gpu_profile({"4": {"factor": 1.2, "source": PACK_SOURCE,
                                    "models": {"small_cnn@1x8x8": 2.0}}})
    assert cost.estimate(config, per_model, share=4).seconds == pytest.approx(3.0 + 2 * by_hand)


def test_plan_prices_packed_trials_and_respects_the_concurrency(tmp_path):
    prof_dir = tmp_path / "profiles"
    doc = {**_profile_doc({"small_cnn@1x8x8": {"batch": 100, "fwd_s": 0.1, "step_s": 0.3}},
                          kind="gpu", overhead=3.0), "device": "Packed GPU",
           "packing": {"4": {"factor": 1.33, "source": PACK_SOURCE}}}
    _write_profile(prof_dir, doc)
    spec = load_space(_space(tmp_path, "grid:\n  maxup.m: [1]\nseeds: 4\nresources: "
                             "{gpus_per_trial: 0.25}\nconcurrency: 4\n"))
    trials = spec.expand()
    four = plan.Target("one GPU", ["Packed GPU"] * 4, {"Packed GPU": "gpu"})
    priced = plan.price(spec, trials, four, {}, dirs=[prof_dir])
    each = 3.0 + _epochs_by_hand(1) * 4 / 1.33
    assert priced.seconds == pytest.approx([each] * 4)
    assert priced.wall_s == pytest.approx(each)  # all four at once on the one GPU
    assert any("1.33" in n for n in priced.notes)
    # concurrency 2: two trials share the GPU; no factor at 2 is measured → no gain assumed
    two = plan.Target("one GPU", ["Packed GPU"] * 2, {"Packed GPU": "gpu"})
    priced = plan.price(spec, trials, two, {}, dirs=[prof_dir])
    each2 = 3.0 + _epochs_by_hand(1) * 2
    assert priced.seconds == pytest.approx([each2] * 4)
    assert priced.wall_s == pytest.approx(2 * each2)
    assert any("no packing factor measured" in n for n in priced.notes)


def test_refinement_of_a_packed_plan_does_not_count_the_sharing_twice(tmp_path):
    from maxup import records

    prof = _gpu_profile({"4": {"factor": 1.33, "source": PACK_SOURCE}})
    config = load_space(_space(tmp_path, "grid:\n  maxup.m: [1]\n")).expand()[0].config
    epoch = 13 * 100 * 0.3 / 100 + 540 * 0.1 / 100
    # the record ran packed, exactly as the packed model predicts
    hist = [{"epoch": e, "wall_s": epoch * 4 / 1.33} for e in (1, 2)]
    rec = records.parse_record(records.build_record(
        config=config, history=hist, status="running", timings={},
        env={"device_name": DEVICE}))
    assert cost.refinement([rec], prof, share=4)["*"] == pytest.approx(1.0)
    assert cost.refinement([rec], prof)["*"] == pytest.approx(4 / 1.33)


@pytest.mark.parametrize("packing, field", [
    ({"1": {"factor": 1.0, "source": "s"}}, "packing.1"),
    ({"four": {"factor": 1.0, "source": "s"}}, "packing.four"),
    ({"4": {"factor": 0, "source": "s"}}, "packing.4.factor"),
    ({"4": {"factor": "1.33", "source": "s"}}, "packing.4.factor"),
    ({"4": {"factor": 1.33, "source": ""}}, "packing.4.source"),
    ({"4": {"factor": 1.33, "source": "s", "models": {"m@1x2x2": -1}}},
     "packing.4.models.m@1x2x2"),
    ([1.33], "packing"),
])
def test_bad_packing_entry_is_one_line_naming_the_field(tmp_path, packing, field):
    doc = _profile_doc({}, kind="gpu")
    doc["packing"] = packing
    with pytest.raises(ProfileError) as exc:
        cost.load_profile(_write_profile(tmp_path, doc))
    assert f"{field}: got" in str(exc.value) and "\n" not in str(exc.value)


def test_packing_and_entry_basis_survive_a_write_and_read():
    doc = _profile_doc({"small_cnn@1x8x8": {"batch": 4, "fwd_s": 0.1, "step_s": 0.2,
                                            "basis": "derived for a test"}}, kind="gpu")
    doc["packing"] = {"4": {"factor": 1.33, "source": PACK_SOURCE,
                            "models": {"small_cnn@1x8x8": 1.5}}}
    prof = cost.parse_profile(doc, "t")
    again = cost.parse_profile(json.loads(json.dumps(prof.to_dict())), "t")
    assert again.packing == prof.packing and again.packing[4].models == {"small_cnn@1x8x8": 1.5}
    assert again.models["small_cnn@1x8x8"].basis == "derived for a test"
    assert "packing" not in cost.parse_profile(_profile_doc({}), "t").to_dict()


# --------------------------------------------------------------------------- shipped GPU profiles

#: issue 25's measurement (shared gpu/nvidia-h200.json): `maxup calibrate`, batch 256
H200_MEASURED = {
    "resnet110@3x32x32": (0.018319187999992437, 0.06651624900000286),
    "preact_resnet110@3x32x32": (0.01741682699999103, 0.06289173300000073),
    "wrn28_10@3x32x32": (0.01687402500000701, 0.07058923800001082),
}
#: NVIDIA datasheets: memory bandwidth GB/s, dense TF32 TFLOP/s (None: no TF32), FP32 TFLOP/s
DATASHEET = {
    "NVIDIA H100 80GB HBM3": (3350, 494.7, 67), "NVIDIA A100-SXM4-40GB": (1555, 156, 19.5),
    "NVIDIA A100-SXM4-80GB": (2039, 156, 19.5), "NVIDIA A10G": (600, 35, 31.2),
    "NVIDIA L4": (300, 60, 30.3), "NVIDIA L40S": (864, 183, 91.6),
    "Tesla T4": (320, None, 8.1), "Tesla V100-SXM2-16GB": (900, None, 15.7),
}
H200_BW, H200_TF32 = 4800, 494.7


@pytest.fixture(scope="module")
def cifar_flops():
    """Forward FLOPs per CIFAR image, counted here (not read from the profiles)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from maxup.models import build_model

    out = {}
    for name in ("resnet20", "resnet56", "resnet110", "wrn28_10"):
        model = build_model(name, num_classes=10, in_channels=3, mean=(0.5,) * 3,
                            std=(0.25,) * 3).eval().to("meta")  # shapes only: fast
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros((1, 3, 32, 32), device="meta"))
        out[name] = float(counter.get_total_flops())
    return out


def _shipped(device: str) -> cost.Profile:
    return cost.load_profile(cost.SHIPPED_DIR / f"{cost.device_slug(device)}.json")


def test_shipped_h200_profile_is_the_measurement_with_its_packing_factor(tmp_path,
                                                                         cifar_flops):
    prof = _shipped("NVIDIA H200")
    assert prof.kind == "gpu" and not prof.estimate and prof.default_for is None
    measured = {k: t for k, t in prof.models.items() if t.basis is None}
    assert set(measured) == set(H200_MEASURED)
    for key, (fwd, step) in H200_MEASURED.items():
        assert (measured[key].batch, measured[key].fwd_s, measured[key].step_s) == (256, fwd,
                                                                                    step)
    pack = prof.packing[4]
    assert pack.factor == 1.33 and "issue 25" in pack.source and "0.25" in pack.source
    assert set(prof.packing) == {4}
    found, note = cost.find_profile("NVIDIA H200", "gpu", [tmp_path, cost.SHIPPED_DIR])
    assert note is None and found.packing == prof.packing
    # other depths of the family: ResNet-110's time × their forward-FLOP ratio
    r110 = prof.models["resnet110@3x32x32"]
    for name in ("resnet20", "resnet56"):
        t, f = prof.models[f"{name}@3x32x32"], cifar_flops[name] / cifar_flops["resnet110"]
        assert t.step_s == pytest.approx(r110.step_s * f, rel=1e-9)
        assert t.fwd_s == pytest.approx(r110.fwd_s * f, rel=1e-9) and "FLOP" in t.basis
    # a quarter-GPU ResNet-110 epoch on CIFAR-10 at batch 128 (391 steps, 10,000 test images)
    config = {"model": {"name": "resnet110"}, "data": {"name": "cifar10"},
              "train": {"epochs": 1, "batch_size": 128, "workers": 1},
              "maxup": {"m": 1, "warmup_epochs": 0}}
    epoch = 391 * 128 * 0.06651624900000286 / 256 + 10_000 * 0.018319187999992437 / 256
    assert cost.estimate(config, prof).seconds == pytest.approx(30.0 + epoch)
    quarter = cost.estimate(config, prof, share=cost.trials_sharing(0.25))
    assert quarter.seconds == pytest.approx(30.0 + epoch * 4 / 1.33)  # not epoch × 1


def test_derived_gpu_profiles_keep_their_documented_ratios(cifar_flops):
    h200 = _shipped("NVIDIA H200")
    for device, (bw, tf32, fp32) in DATASHEET.items():
        prof = _shipped(device)
        assert prof.estimate and prof.kind == "gpu" and not prof.packing
        for name in ("resnet110", "preact_resnet110"):  # thin: memory bandwidth
            t, ref = prof.models[f"{name}@3x32x32"], h200.models[f"{name}@3x32x32"]
            assert t.step_s == pytest.approx(ref.step_s * H200_BW / bw, rel=1e-9), device
            assert t.fwd_s == pytest.approx(ref.fwd_s * H200_BW / bw, rel=1e-9), device
        wrn, ref = prof.models["wrn28_10@3x32x32"], h200.models["wrn28_10@3x32x32"]
        if tf32 is not None:  # wide: dense TF32 throughput
            assert wrn.step_s == pytest.approx(ref.step_s * H200_TF32 / tf32, rel=1e-9), device
        else:  # no TF32: FLOPs ÷ 60 % of the FP32 peak, step = 3 × forward
            fwd = 256 * cifar_flops["wrn28_10"] / (0.6 * fp32 * 1e12)
            assert wrn.fwd_s == pytest.approx(fwd, rel=1e-9) and wrn.step_s == pytest.approx(
                3 * fwd, rel=1e-9)
            assert "no TF32" in wrn.basis and "no TF32" in prof.source
        r110 = prof.models["resnet110@3x32x32"]
        f = cifar_flops["resnet56"] / cifar_flops["resnet110"]
        assert prof.models["resnet56@3x32x32"].step_s == pytest.approx(r110.step_s * f, rel=1e-9)
        assert f"{H200_BW:g} ÷ {bw:g} GB/s" in prof.source  # the ratio is stated where it's used
    # the H100 has the H200's compute: WRN-28-10 as measured, not 3.2× slower per image as the
    # former FLOP estimate (111.9 ms at batch 128) said
    h100 = _shipped("NVIDIA H100 80GB HBM3").models["wrn28_10@3x32x32"]
    assert h100.step_s / h100.batch == pytest.approx(0.07058923800001082 / 256)
    assert _shipped("NVIDIA A100-SXM4-40GB").default_for == "gpu"
