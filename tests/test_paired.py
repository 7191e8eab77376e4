"""Arms compared by seed: the paired t-test (and Welch's fallback) against scipy, and the
language model's second baseline, the per-sequence m = 1 control, in compare, the tables, the
CSV and the report. Records are built by hand (tests/test_analysis.make_record)."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_analysis import make_record, restamp, write_all

from maxup import identity
from maxup.analysis import build_table, compare, load_records, render, sweep_table
from maxup.analysis.arms import CONTROL, REFERENCE, arms_of, difference
from maxup.analysis.report import verdicts
from maxup.analysis.stats import (
    PAIRED,
    WELCH,
    compare_seeds,
    detectable_difference,
    paired_difference,
    welch_difference,
)


def _t_interval_of_differences(d):
    d = np.asarray(d, float)
    half = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return d.mean() - half, d.mean() + half


# ------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("a, b", [
    ([339.8, 316.8, 360.7, 326.7, 334.9], [341.6, 325.8, 316.2, 329.9, 379.6]),
    ([74.1, 73.5, 74.9, 73.2, 74.0, 73.8], [74.9, 74.6, 75.1, 74.2, 74.5, 74.8]),
    ([1.0, 2.5], [0.0, 3.0]),
])
def test_paired_difference_is_scipys_ttest_rel(a, b):
    got = paired_difference(dict(enumerate(a)), dict(enumerate(b)))
    want = stats.ttest_rel(a, b)
    assert got.test == PAIRED and got.n_pairs == len(a) and got.dof == len(a) - 1
    assert got.diff == pytest.approx(np.mean(np.subtract(a, b)))
    assert got.p_value == pytest.approx(want.pvalue)
    ci = want.confidence_interval(0.95)
    assert (got.ci_low, got.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    lo, hi = _t_interval_of_differences(np.subtract(a, b))  # t.ppf written out
    assert (got.ci_low, got.ci_high) == (pytest.approx(lo), pytest.approx(hi))


def test_paired_difference_pairs_only_the_common_finite_seeds():
    nan = float("nan")
    a = {0: 10.0, 1: 11.5, 2: 12.0, 3: 9.0, 7: 50.0, 4: nan, 5: 3.0}
    b = {0: 9.0, 1: 10.0, 2: 11.7, 3: 8.5, 4: 1.0, 9: -3.0, 5: nan}
    got = paired_difference(a, b)
    seeds = [0, 1, 2, 3]  # 7 and 9 in one arm only; 4 is NaN in a, 5 in b
    want = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
    assert got.n_pairs == 4 and (got.n_a, got.n_b) == (6, 6)
    assert got.p_value == pytest.approx(want.pvalue)
    assert got.diff == pytest.approx(np.mean([a[s] - b[s] for s in seeds]))


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy, on 0 variance
def test_paired_difference_without_variance_is_undefined_not_p_zero():
    """Every seed 2.0 apart: scipy's t is infinite (p = 0); here the test is undefined."""
    a, b = {0: 3.0, 1: 4.5, 2: 7.25}, {0: 1.0, 1: 2.5, 2: 5.25}
    assert stats.ttest_rel(list(a.values()), list(b.values())).pvalue == 0.0
    got = paired_difference(a, b)
    assert got.diff == 2.0 and got.n_pairs == 3
    assert math.isnan(got.p_value) and math.isnan(got.ci_low) and math.isnan(got.ci_high)
    assert "no variance" in got.undefined


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy, on 0 variance
@pytest.mark.parametrize("a, b", [
    ([94.8, 94.9, 94.7, 94.9], [95.4, 95.5, 95.3, 95.45, 95.37]),
    ([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]),  # one side without variance: still defined
])
def test_welch_difference_is_scipys_ttest_ind(a, b):
    got = welch_difference(a, b)
    want = stats.ttest_ind(a, b, equal_var=False)
    assert got.test == WELCH and got.n_pairs == 0 and (got.n_a, got.n_b) == (len(a), len(b))
    assert got.diff == pytest.approx(np.mean(a) - np.mean(b))
    assert got.p_value == pytest.approx(want.pvalue) and got.dof == pytest.approx(want.df)
    ci = want.confidence_interval(0.95)
    assert (got.ci_low, got.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))


@pytest.mark.parametrize("a, b, why", [([1.0], [2.0, 3.0], "fewer than 2"),
                                       ([1.0, 1.0], [2.0, 2.0], "no within-arm variance")])
def test_welch_difference_is_undefined_where_welch_is(a, b, why):
    got = welch_difference(a, b)
    assert math.isnan(got.p_value) and math.isnan(got.ci_low) and why in got.undefined


def test_one_common_seed_falls_back_to_welch_on_every_seed():
    a = {0: 10.0, 1: 11.0, 2: 12.5}
    b = {2: 9.0, 5: 8.0, 6: 9.5}  # seed 2 only in common
    got = compare_seeds(a, b)
    want = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    assert got.test == WELCH and got.n_pairs == 0
    assert got.p_value == pytest.approx(want.pvalue)
    two = compare_seeds(a, {**b, 1: 10.5})  # two common seeds: paired
    assert two.test == PAIRED and two.n_pairs == 2
    assert two.p_value == pytest.approx(stats.ttest_rel([11.0, 12.5], [10.5, 9.0]).pvalue)


# ------------------------------------------------------------------------ language-model arms
REF = [341.6, 325.8, 316.2, 329.9, 379.6]
CTRL = [335.0, 322.1, 318.4, 327.5, 371.2]
M2 = [316.8, 317.7, 310.7, 319.9, 356.8]


def _lm(seed: int, m: int, ppl: float, per_sequence: bool = False, sweep: str = "lm") -> dict:
    rec = make_record(None, seed=seed, m=m, dataset="kjv", model="awd_lstm", sweep=sweep,
                      ops=["gaussian"], test_ppl=ppl, val_ppl=ppl + 20.0)
    # Spelled out as a resolved config does; False is left out of the trial id.
    rec["config"]["lm"] = {"bptt": 35, "dyneval": False, "mask_per_sequence": per_sequence}
    return restamp(rec)


def _lm_records(control=True, m2_seeds=range(5), ctrl_seeds=range(5), **kw) -> list[dict]:
    recs = [_lm(s, 1, v, **kw) for s, v in enumerate(REF)]
    recs += [_lm(s, 1, CTRL[s], per_sequence=True, **kw) for s in ctrl_seeds if control]
    recs += [_lm(s, 2, M2[s], **kw) for s in m2_seeds]
    return recs


def test_control_is_the_counterpart_at_m1_with_per_sequence_masks():
    m2, ctrl, ref = _lm(0, 2, 1.0), _lm(0, 1, 1.0, per_sequence=True), _lm(0, 1, 1.0)
    changes = {"maxup.m": 1, "lm.mask_per_sequence": True}
    assert identity.counterpart_of(m2["config"], changes) == identity.arm_id(ctrl["config"])
    assert identity.counterpart_of(m2["config"], {"maxup.m": 1}) == \
        identity.arm_id(ref["config"]) == identity.counterpart_arm_id(m2["config"], "maxup.m", 1)
    assert identity.arm_id(ctrl["config"]) != identity.arm_id(ref["config"])


def test_compare_against_reference_and_control_paired_by_seed(tmp_path):
    df = load_records(write_all(tmp_path, _lm_records()))
    ref = compare(df, "final.test_ppl")
    ctrl = compare(df, "final.test_ppl", CONTROL)
    assert len(ref) == len(ctrl) == 1  # only m = 2 is compared; the control is an m = 1 arm
    for got, base in ((ref, REF), (ctrl, CTRL)):
        want = stats.ttest_rel(M2, base)
        r = got.iloc[0]
        assert r["test"] == PAIRED and r["n_pairs"] == 5
        assert r["diff"] == pytest.approx(np.mean(np.subtract(M2, base)))
        assert r["p_value"] == pytest.approx(want.pvalue)
        ci = want.confidence_interval(0.95)
        assert (r["diff_ci_low"], r["diff_ci_high"]) == (pytest.approx(ci.low),
                                                         pytest.approx(ci.high))
        assert r["base_mean"] == pytest.approx(np.mean(base))
    assert ref.iloc[0]["base_arm_id"] != ctrl.iloc[0]["base_arm_id"]


def test_difference_pairs_common_seeds_when_one_arm_misses_some(tmp_path):
    df = load_records(write_all(tmp_path, _lm_records(m2_seeds=(0, 1, 3))))
    arms = {a.config["maxup"]["m"]: a for a in arms_of(df, "final.test_ppl")
            if not a.config["lm"].get("mask_per_sequence")}
    d = difference(arms[2], arms[1])
    seeds = [0, 1, 3]
    assert d.test == PAIRED and d.n_pairs == 3
    assert d.p_value == pytest.approx(
        stats.ttest_rel([M2[s] for s in seeds], [REF[s] for s in seeds]).pvalue)
    t = sweep_table(df)
    md = render(t, "md")
    assert "(paired, n = 3)" in md


def test_sweep_table_shows_both_baselines_and_names_each_test(tmp_path):
    # The control ran seeds 0 and 4 only... plus seed 7, which m = 2 lacks: 2 pairs.
    recs = _lm_records(ctrl_seeds=(0, 4))
    recs.append(_lm(7, 1, 330.0, per_sequence=True))
    df = load_records(write_all(tmp_path, recs))
    t = sweep_table(df)
    labels = [c.label for c in t.columns]
    assert labels[4:] == ["Δ vs m=1", "p vs m=1", "Δ vs control", "p vs control"]
    rows = {lab: i for i, (_, lab) in enumerate(t.rows)}
    m2 = next(i for lab, i in rows.items() if lab.startswith("m=2"))
    ref_p = stats.ttest_rel(M2, REF)
    ctrl_p = stats.ttest_rel([M2[0], M2[4]], [CTRL[0], CTRL[4]])
    assert t.cell(m2, 5).mean == pytest.approx(ref_p.pvalue)
    assert t.cell(m2, 6).mean == pytest.approx(np.mean([M2[0] - CTRL[0], M2[4] - CTRL[4]]))
    assert t.cell(m2, 7).mean == pytest.approx(ctrl_p.pvalue) and t.cell(m2, 7).n == 2
    md = render(t, "md")
    assert f"{ref_p.pvalue:.3g} (paired, n = 5)" in md
    assert f"{ctrl_p.pvalue:.3g} (paired, n = 2)" in md
    ci = ctrl_p.confidence_interval(0.95)
    assert f"[{ci.low:+.2f}, {ci.high:+.2f}]" in md
    ctrl_row = next(i for lab, i in rows.items() if "mask_per_sequence=True" in lab)
    assert t.cell(ctrl_row, 6).text == "control" and t.cell(ctrl_row, 4).text == "baseline"
    assert any("Δ vs control" in n and "only in the max" in n for n in t.notes)
    assert any("paired t-test" in n and "Welch" in n for n in t.notes)
    # CSV: the control's comparison has its own columns.
    csv = pd.read_csv(io.StringIO(render(t, "csv")))
    line = csv[(csv["column"] == "p vs control") & csv["row"].str.startswith("m=2")].iloc[0]
    assert line["control_test"] == PAIRED and line["control_n_pairs"] == 2
    assert line["control_p"] == pytest.approx(ctrl_p.pvalue)
    line = csv[(csv["column"] == "p vs m=1") & csv["row"].str.startswith("m=2")].iloc[0]
    assert line["base_test"] == PAIRED and line["base_p"] == pytest.approx(ref_p.pvalue)
    assert line["base_diff_ci_low"] == pytest.approx(ref_p.confidence_interval().low)


def test_control_with_one_common_seed_falls_back_to_welch(tmp_path):
    recs = _lm_records(ctrl_seeds=(0,))
    recs += [_lm(s, 1, v, per_sequence=True) for s, v in ((8, 331.0), (9, 340.5))]
    df = load_records(write_all(tmp_path, recs))
    (r,) = compare(df, "final.test_ppl", CONTROL).to_dict("records")
    ctrl = [CTRL[0], 331.0, 340.5]
    assert r["test"] == WELCH and r["n_pairs"] == 0
    assert r["p_value"] == pytest.approx(stats.ttest_ind(M2, ctrl, equal_var=False).pvalue)
    assert r["diff"] == pytest.approx(np.mean(M2) - np.mean(ctrl))
    assert "(Welch)" in render(sweep_table(df), "md")


def test_lm_records_without_a_control_say_so_and_images_never_mention_it(tmp_path):
    lm = load_records(write_all(tmp_path / "lm", _lm_records(control=False)))
    t = sweep_table(lm)
    assert [c.label for c in t.columns][4:] == ["Δ vs m=1", "p vs m=1"]
    assert any(n.startswith("no per-sequence m = 1 control") for n in t.notes)
    assert compare(lm, "final.test_ppl", CONTROL).empty
    images = [make_record(None, seed=s, m=m, dataset="digits", model="small_cnn",
                          ops=["gaussian"], test_acc=90.0 + s + m * 0.3 + 0.1 * s * s)
              for m in (1, 4) for s in range(3)]
    img = load_records(write_all(tmp_path / "img", images))
    t = sweep_table(img)
    assert not any("control" in n for n in t.notes)
    assert not any("control" in line for line in verdicts(img, "final.test_acc", False))


def test_table6_has_a_control_row_and_notes_for_both_baselines(tmp_path):
    recs = [dict(r, paper_table="6") for r in _lm_records()]
    for r in recs:
        r["config"]["data"]["name"] = "ptb"
        restamp(r)
    table = build_table(load_records(write_all(tmp_path, recs)), "6")
    assert [v for v, _ in table.rows] == ["baseline", "control", "maxup"]
    test = [c.key for c in table.columns].index("final.test_ppl")
    for row, vals in ((0, REF), (1, CTRL), (2, M2)):
        assert table.cell(row, test).mean == pytest.approx(np.mean(vals))
    cell = table.cell(2, test)
    assert cell.comparison.found and cell.control.found
    assert cell.control.p_value == pytest.approx(stats.ttest_rel(M2, CTRL).pvalue)
    assert table.cell(1, test).comparison is None and table.cell(1, test).control is None
    notes = [n for n in table.notes if n.startswith("ADV-AWD-LSTM + MaxUp / Test:")]
    assert len(notes) == 2
    assert "vs its m = 1 arm" in notes[0] and "paired t-test, 5 seeds" in notes[0]
    assert "vs its control (m = 1, per-sequence masks) arm" in notes[1]
    p = stats.ttest_rel(M2, CTRL).pvalue
    assert f"p = {p:.3g} (paired t-test, 5 seeds)" in notes[1]
    assert sum("paired t-test on the per-seed differences" in n for n in table.notes) == 1


def test_report_verdicts_against_reference_and_control(tmp_path):
    df = load_records(write_all(tmp_path, _lm_records()))
    lines = verdicts(df, "final.test_ppl", lower_is_better=True)
    assert len(lines) == 2
    ref, ctrl = lines
    for line, base, name in ((ref, REF, "its m = 1 baseline"),
                             (ctrl, CTRL, "its per-sequence m = 1 control")):
        res = stats.ttest_rel(M2, base)
        word = "beats" if res.pvalue < 0.05 else "does not beat"
        assert f"- m = 2, lm.mask_per_sequence = False {word} {name}" in line
        p = f"{res.pvalue:.2g}" if res.pvalue < 0.001 else f"{res.pvalue:.3f}"
        assert f"paired t-test p = {p} over 5 common seeds" in line
        # The sensitivity: noncentral t at 4 dof and the SD of the 5 differences.
        d = np.subtract(M2, base)
        se = d.std(ddof=1) / math.sqrt(5)
        crit = stats.t.ppf(0.975, 4)
        nc = np.arange(0.0, 10.0, 0.001)
        power = stats.nct.sf(crit, 4, nc) + stats.nct.cdf(-crit, 4, nc)
        want = float(np.interp(0.8, power, nc)) * se  # power rises with nc on [0, 10)
        assert line.endswith(f" Sensitivity: 80 % power for |Δ| ≥ {want:.2f} "
                             f"({100 * want / np.mean(base):.2g} % of the baseline)."), line
    assert REFERENCE.label == "m = 1"


def test_report_verdict_without_variance_says_no_test_possible(tmp_path):
    recs = [_lm(s, 1, 300.0 + s) for s in range(3)]
    recs += [_lm(s, 2, 290.0 + s) for s in range(3)]  # exactly 10 lower at every seed
    (line,) = verdicts(load_records(write_all(tmp_path, recs)), "final.test_ppl", True)
    assert "cannot be compared with its m = 1 baseline" in line
    assert "the paired differences have no variance" in line and "Δ = -10.00" in line


@pytest.mark.parametrize("pairs", [3, 5, 10])
def test_detectable_difference_has_80_percent_power_by_simulation(pairs):
    """A paired design of ``pairs`` seeds with differences of SD 1: at the returned Δ,
    scipy's ttest_1samp on simulated samples rejects at α = 0.05 in 80 % of them (200,000
    draws: the binomial SD of the rate is 0.0009), and at half that Δ far less often."""
    delta = detectable_difference(1 / math.sqrt(pairs), pairs - 1)
    rng = np.random.default_rng(pairs)
    rate = {}
    for d in (delta, delta / 2):
        sample = rng.normal(d, 1.0, size=(200_000, pairs))
        rate[d] = float((stats.ttest_1samp(sample, 0.0, axis=1).pvalue < 0.05).mean())
    assert abs(rate[delta] - 0.8) < 0.005, rate
    assert rate[delta / 2] < 0.45


def test_detectable_difference_tends_to_the_normal_formula_and_refuses_no_spread():
    # With many degrees of freedom the t-test is the z-test: Δ = (z_0.975 + z_0.8) · se
    # (the far tail's share of the power is < 1e-9 there).
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert detectable_difference(0.5, 1e7) == pytest.approx(0.5 * z, rel=1e-5)
    assert math.isnan(detectable_difference(0.0, 4))
    assert math.isnan(detectable_difference(1.0, math.nan))


def test_paired_and_welch_differences_state_their_sensitivity():
    a = {0: 300.0, 1: 302.5, 2: 299.0, 3: 305.0}
    b = {0: 301.0, 1: 301.0, 2: 301.5, 3: 304.0}
    d = np.subtract(list(a.values()), list(b.values()))
    paired = paired_difference(a, b)
    se = d.std(ddof=1) / math.sqrt(d.size)
    assert paired.detectable == pytest.approx(detectable_difference(se, d.size - 1))
    welch = welch_difference(a.values(), b.values())
    va, vb = np.var(list(a.values()), ddof=1) / 4, np.var(list(b.values()), ddof=1) / 4
    assert welch.detectable == pytest.approx(detectable_difference(math.sqrt(va + vb),
                                                                   welch.dof))
    assert math.isnan(paired_difference({0: 1.0, 1: 2.0}, {0: 0.0, 1: 1.0}).detectable)
