"""maxup.analysis: loading, statistics, tables, figures and the tables/figures CLI."""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from maxup import identity
from maxup.analysis import (
    aggregate,
    build_table,
    compare,
    load_records,
    render,
    summary,
    sweep_table,
    tables_for,
)
from maxup.analysis.load import RecordSkipped
from maxup.analysis.published import PUBLISHED
from maxup.cli.figures import configure as configure_figures
from maxup.cli.figures import run as run_figures
from maxup.cli.tables import configure as configure_tables
from maxup.cli.tables import run as run_tables
from maxup.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
RADII = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75]
#: Table 8's columns in the paper: 0.25 ... 2.75 (r = 0 is clean accuracy, not a column).
T8_RADII = RADII[1:]

BASE_CONFIG = {
    "seed": 0,
    "model": {"name": "resnet110", "num_classes": 10, "dropout": 0.0, "weights": None},
    "data": {"name": "cifar10", "root": "/data", "subset": None, "download": False,
             "num_workers": 2, "train_transform": "standard"},
    "augment": {"ops": ["crop_flip", "cutout"], "sigma": 0.25, "cutout_size": 16,
                "cutmix_alpha": 1.0, "mixup_alpha": 1.0, "crop_padding": 4},
    "maxup": {"m": 1, "mode": "efficient", "bn": "batch_stats", "warmup_epochs": 5,
              "chunk": None},
    "optim": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
              "schedule": "multistep", "milestones": [100, 150], "gamma": 0.1},
    "train": {"epochs": 3, "batch_size": 256, "eval_batch_size": 512, "device": "cpu",
              "precision": "fp32", "channels_last": False, "checkpoint_every": 1,
              "workers": 1, "min_workers": 1, "start_timeout_s": 60, "progress": False},
    "certify": {"enabled": False, "sigma": 0.25, "n0": 100, "n": 1000, "alpha": 0.001,
                "skip": 20, "batch": 400},
}


def make_record(acc, *, seed=0, m=1, model="resnet110", dataset="cifar10", sweep="s",
                paper_table=None, status="completed", ops=("crop_flip", "cutout"),
                certified=None, best_acc=None, epochs=3, test_loss=None, **metrics):
    """A record valid per docs/records.md with the chosen values."""
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["seed"] = seed
    cfg["model"]["name"] = model
    cfg["data"]["name"] = dataset
    cfg["augment"]["ops"] = list(ops)
    cfg["maxup"]["m"] = m
    cfg["train"]["epochs"] = epochs
    if certified is not None:
        cfg["certify"]["enabled"] = True
    trial_id = identity.trial_id(cfg)  # the id its config hashes to (maxup.identity)
    history = []
    for e in range(1, epochs + 1):
        a = None if acc is None else acc - (epochs - e) * 2.0 + seed * 0.1
        history.append({"epoch": e, "train_loss": 1.0 / e, "train_acc": 50.0 + e,
                        "test_loss": (test_loss or 1.0) / e, "test_acc": a,
                        "test_top5": None, "lr": 0.1, "maxup_active": m > 1 and e > 1,
                        "maxup_gap": 0.1 if m > 1 else 0.0, "maxup_wins": [1] * m,
                        "wall_s": 1.0, "selection_s": 0.1, "images_per_s": 100.0})
    final = dict(history[-1]) if acc is not None else {}
    final.update(metrics)
    best = dict(final, epoch=epochs)
    if best_acc is not None:
        best["test_acc"] = best_acc
    rec = {
        "schema": "maxup.trial/1", "sweep": sweep, "trial_id": trial_id, "status": status,
        "config": cfg, "seed": seed, "axes": {"maxup.m": m, "seed": seed},
        "paper_table": paper_table,
        "final": final if status == "completed" else {},
        "best": best if status == "completed" else {},
        "history": history if status != "failed" else history[:1],
        "timings": {"wall_s": 10.0, "train_s": 8.0, "eval_s": 1.0, "selection_s": 0.5,
                    "selection_share": 0.05, "images_per_s": 1000.0},
        "environment": {"maxup": "0.1.0", "torch": "2.14.1", "ray": None, "python": "3.11",
                        "git_commit": None, "device": "cpu", "workers": 1, "hostname": "h"},
        "failure": ({"reason": "non-finite loss", "epoch": 1, "step": 3, "value": "nan"}
                    if status == "failed" else None),
        "certification": None if certified is None else {
            "sigma": 0.25, "n0": 100, "n": 1000, "alpha": 0.001, "skip": 20, "batch": 400,
            "radii": RADII, "certified_accuracy": list(certified), "rows": []},
        "created": "2026-01-01T00:00:00Z", "updated": "2026-01-01T01:00:00Z",
    }
    return rec


def restamp(rec: dict) -> dict:
    """The record with its trial id recomputed after a test edited its config."""
    from maxup import identity

    rec["trial_id"] = identity.trial_id(rec["config"])
    return rec


def write(root: Path, rec: dict) -> Path:
    path = root / (rec["sweep"] or "single") / "records" / f"{rec['trial_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path


def write_all(root: Path, recs) -> Path:
    for r in recs:
        write(root, r)
    return root


def certified_records(radii: dict, **kwargs) -> list[dict]:
    """Records of digits models certified image by image: ``radii[(m, sigma, seed)]`` lists
    each image's certified radius (None: wrong or abstained); ``kwargs`` go to make_record."""
    recs = []
    for (m, sigma, seed), rs in radii.items():
        rec = make_record(80.0, seed=seed, m=m, dataset="digits", certified=[0.0] * len(RADII),
                          **kwargs)
        rec["config"]["augment"]["sigma"] = sigma
        rec["certification"]["sigma"] = sigma
        rec["certification"]["rows"] = [
            {"index": i, "label": 0, "prediction": 0 if r is not None else 1,
             "radius": r if r is not None else 0.0, "correct": r is not None}
            for i, r in enumerate(rs)]
        recs.append(restamp(rec))
    return recs


def t_ci(x):
    x = np.asarray(x, float)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return x.mean() - half, x.mean() + half


# ------------------------------------------------------------------------------------ import
def test_import_pulls_in_neither_ray_nor_torch():
    code = ("import sys, maxup.analysis, maxup.cli.tables, maxup.cli.figures; "
            "bad = [m for m in ('ray', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# -------------------------------------------------------------------------------------- load
def test_load_flattens_columns_and_keeps_objects(tmp_path):
    write(tmp_path, make_record(95.0, seed=1, m=4, certified=[70.0] * 11))
    df = load_records(tmp_path)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["config.maxup.m"] == 4 and row["config.seed"] == 1 and row["seed"] == 1
    assert row["config.augment.ops"] == "crop_flip+cutout"
    assert row["config.optim.milestones"] == "100,150"
    assert row["final.test_acc"] == pytest.approx(95.0 + 0.1)
    assert row["timings.wall_s"] == 10.0 and row["environment.device"] == "cpu"
    assert isinstance(row["history"], list) and len(row["history"]) == 3
    assert row["certification"]["radii"] == RADII
    assert row["status"] == "completed" and row["sweep"] == "s"


def test_load_single_run_record_json_and_file_uri(tmp_path):
    rec = make_record(90.0, sweep=None)
    (tmp_path / "run1").mkdir()
    (tmp_path / "run1" / "record.json").write_text(json.dumps(rec))
    write(tmp_path, make_record(91.0, seed=2))
    assert len(load_records(tmp_path)) == 2
    df = load_records(tmp_path.as_uri())  # file:// through pyarrow.fs
    assert len(df) == 2
    assert set(df["final.test_acc"].round(6)) == {90.0, 91.2}


def test_corrupt_foreign_and_wrong_schema_files_are_warned_and_skipped(tmp_path):
    good = write(tmp_path, make_record(95.0))
    recdir = good.parent
    (recdir / "truncated.json").write_text(good.read_text()[:40])
    (recdir / "foreign.json").write_text(json.dumps({"hello": "world"}))
    other = make_record(94.0, seed=3)
    other["schema"] = "maxup.trial/2"
    (recdir / "v2.json").write_text(json.dumps(other))
    (recdir / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.warns(RecordSkipped) as caught:
        df = load_records(tmp_path)
    messages = " ".join(str(w.message) for w in caught)
    for name in ("truncated.json", "foreign.json", "v2.json", "binary.json"):
        assert name in messages
    assert len(df) == 1
    assert summary(df)["skipped"] == 4


def test_failed_trial_kept_counted_and_excluded_running_counted(tmp_path):
    recs = [make_record(90.0, seed=0), make_record(92.0, seed=1),
            make_record(None, seed=2, status="failed"),
            make_record(10.0, seed=3, status="running")]
    df = load_records(write_all(tmp_path, recs))
    s = summary(df)
    assert (s["completed"], s["failed"], s["running"]) == (2, 1, 1)
    assert s["failure_reasons"] == {"non-finite loss": 1}
    assert "non-finite loss" in df.loc[df["status"] == "failed", "failure.reason"].iloc[0]
    agg = aggregate(df)
    assert len(agg) == 1
    assert agg["n"].iloc[0] == 2
    assert agg["mean"].iloc[0] == pytest.approx(np.mean([90.0, 92.1]))


def test_missing_root_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="RESULTS"):
        load_records(tmp_path / "nope")


# ------------------------------------------------------------------------------------- stats
def test_aggregate_known_answer_against_numpy_scipy(tmp_path):
    base = [94.81, 94.95, 94.70, 94.88, 94.86]
    maxup = [95.40, 95.51, 95.33, 95.45, 95.37, 95.29]
    recs = [make_record(None, seed=i, test_acc=v) for i, v in enumerate(base)]
    # Seeds the baseline does not have: nothing to pair, so Welch's test.
    recs += [make_record(None, seed=10 + i, m=4, test_acc=v) for i, v in enumerate(maxup)]
    df = load_records(write_all(tmp_path, recs))
    agg = aggregate(df, "final.test_acc").set_index("config.maxup.m")
    for m, vals in ((1, base), (4, maxup)):
        x = np.asarray(vals)
        row = agg.loc[m]
        assert row["n"] == len(x)
        assert row["mean"] == pytest.approx(x.mean())
        assert row["std"] == pytest.approx(x.std(ddof=1))
        lo, hi = t_ci(x)
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
        assert (row["min"], row["max"]) == (x.min(), x.max())
    cmp = compare(df, "final.test_acc")
    assert len(cmp) == 1
    assert cmp["diff"].iloc[0] == pytest.approx(np.mean(maxup) - np.mean(base))
    welch = stats.ttest_ind(maxup, base, equal_var=False)
    assert cmp["p_value"].iloc[0] == pytest.approx(welch.pvalue)
    assert cmp["test"].iloc[0] == "Welch" and cmp["n_pairs"].iloc[0] == 0
    ci = welch.confidence_interval(0.95)
    assert (cmp["diff_ci_low"].iloc[0], cmp["diff_ci_high"].iloc[0]) == (
        pytest.approx(ci.low), pytest.approx(ci.high))


def test_equal_values_are_two_observations(tmp_path):
    recs = [make_record(None, seed=s, test_acc=93.5) for s in (0, 1)]
    agg = aggregate(load_records(write_all(tmp_path, recs)))
    assert agg["n"].iloc[0] == 2
    assert agg["std"].iloc[0] == 0.0
    assert agg["mean"].iloc[0] == 93.5


def test_single_seed_std_is_nan(tmp_path):
    agg = aggregate(load_records(write_all(tmp_path, [make_record(None, test_acc=90.0)])))
    assert agg["n"].iloc[0] == 1 and math.isnan(agg["std"].iloc[0])
    assert math.isnan(agg["ci_low"].iloc[0])


def test_aggregate_ignores_run_local_columns(tmp_path):
    a = make_record(None, seed=0, test_acc=90.0)
    b = make_record(None, seed=1, test_acc=91.0)
    b["config"]["train"]["device"] = "cuda"
    b["config"]["data"]["root"] = "/elsewhere"  # run-local: neither key is in the trial id
    agg = aggregate(load_records(write_all(tmp_path, [a, b])))
    assert len(agg) == 1 and agg["n"].iloc[0] == 2


def test_compare_matches_baseline_on_other_columns(tmp_path):
    recs = []
    for model, off in (("resnet110", 0.0), ("wrn28_10", 2.0)):
        for s in range(3):
            recs.append(make_record(None, seed=s, model=model, test_acc=90 + off + s * 0.1))
            recs.append(make_record(None, seed=s, model=model, m=4,
                                    test_acc=91 + off + s * 0.3))
    cmp = compare(load_records(write_all(tmp_path, recs))).set_index("config.model.name")
    assert set(cmp.index) == {"resnet110", "wrn28_10"}
    for model, off in (("resnet110", 0.0), ("wrn28_10", 2.0)):
        b = [90 + off + s * 0.1 for s in range(3)]
        a = [91 + off + s * 0.3 for s in range(3)]
        assert cmp.loc[model, "diff"] == pytest.approx(np.mean(a) - np.mean(b))
        # Seeds 0-2 in both arms: paired by seed.
        assert cmp.loc[model, "test"] == "paired" and cmp.loc[model, "n_pairs"] == 3
        assert cmp.loc[model, "p_value"] == pytest.approx(stats.ttest_rel(a, b).pvalue)


# ------------------------------------------------------------------------------------ tables
def table3_records(n_base=5, n_maxup=3, skip_model="wrn28_10", epochs=3):
    recs = []
    vals = {}
    for model, off in (("resnet110", 0.0), ("preact_resnet110", 0.2), ("wrn28_10", 2.0)):
        for m, n, add in ((1, n_base, 0.0), (10, n_maxup, 0.6)):
            if model == skip_model and m == 10:
                continue
            v = [94.8 + off + add + 0.05 * s for s in range(n)]
            vals[(model, m)] = v
            recs += [make_record(None, seed=s, m=m, model=model, paper_table="3",
                                 test_acc=x, epochs=epochs) for s, x in enumerate(v)]
    return recs, vals


def test_table3_markdown_bold_missing_and_n(tmp_path):
    recs, vals = table3_records()
    df = load_records(write_all(tmp_path, recs))
    table = build_table(df, "3")
    md = render(table, "md")
    lines = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    r110 = lines["ResNet-110"]
    b = np.asarray(vals[("resnet110", 1)])
    assert f"{b.mean():.2f} ± {b.std(ddof=1):.2f}" in r110
    assert f"{b.mean():.2f} ± {b.std(ddof=1):.2f} (n = 5) |" in r110  # n = 5: unmarked
    mx = np.asarray(vals[("resnet110", 10)])
    assert f"{mx.mean():.2f} ± {mx.std(ddof=1):.2f} (n = 3) †" in r110
    wrn = lines["WideResNet-28-10"]
    assert wrn.rstrip(" |").endswith("—")
    # best per column: WRN baseline is the highest + Cutout mean, PreAct the best MaxUp one
    w = np.asarray(vals[("wrn28_10", 1)])
    assert f"**{w.mean():.2f} ± {w.std(ddof=1):.2f} (n = 5)**" in wrn
    p = np.asarray(vals[("preact_resnet110", 10)])
    assert f"**{p.mean():.2f} ± {p.std(ddof=1):.2f} (n = 3) †**" in lines["PreAct-ResNet-110"]
    assert md.count("**") == 2 * 2 + 2  # two bold cells + bold caption
    assert table.missing() == [("WideResNet-28-10", "+ MaxUp+Cutout")]


def test_latex_booktabs_and_bold(tmp_path):
    recs, vals = table3_records()
    tex = render(build_table(load_records(write_all(tmp_path, recs)), "3"), "latex")
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert tex.count(rule) == 1
    w = np.asarray(vals[("wrn28_10", 1)])
    assert rf"\textbf{{{w.mean():.2f} $\pm$ {w.std(ddof=1):.2f} (n = 5)}}" in tex
    assert "---" in tex  # the missing cell
    assert r"\caption{Table 3" in tex


def test_csv_parses_back_with_the_numbers(tmp_path):
    recs, vals = table3_records()
    text = render(build_table(load_records(write_all(tmp_path, recs)), "3"), "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 6
    by = {(r["row"], r["column"]): r for r in rows}
    r = by[("ResNet-110", "+ MaxUp+Cutout")]
    x = np.asarray(vals[("resnet110", 10)])
    assert float(r["mean"]) == pytest.approx(x.mean())
    assert float(r["std"]) == pytest.approx(x.std(ddof=1))
    assert int(r["n"]) == 3
    lo, hi = t_ci(x)
    assert float(r["ci_low"]) == pytest.approx(lo) and float(r["ci_high"]) == pytest.approx(hi)
    assert by[("WideResNet-28-10", "+ MaxUp+Cutout")]["mean"] == ""
    assert by[("WideResNet-28-10", "+ Cutout")]["best"] == "1"


def test_vs_paper_delta_and_inside_ci(tmp_path):
    # ResNet-110 / + Cutout published 94.84 ± 0.11
    inside = [94.70, 94.80, 94.90, 94.85, 94.95]
    outside = [95.90, 95.91, 95.92, 95.93, 95.94]  # MaxUp cell, published 95.41 far below
    # The paper's protocol: 200 epochs, batch 256, the full training set.
    recs = [make_record(None, seed=s, paper_table="3", test_acc=v, epochs=200)
            for s, v in enumerate(inside)]
    recs += [make_record(None, seed=s, m=10, paper_table="3", test_acc=v, epochs=200)
             for s, v in enumerate(outside)]
    table = build_table(load_records(write_all(tmp_path, recs)), "3", vs_paper=True)
    rows = {(r["row"], r["column"]): r for r in csv.DictReader(io.StringIO(
        render(table, "csv", vs_paper=True)))}
    a = rows[("ResNet-110", "+ Cutout")]
    assert float(a["published"]) == 94.84 and float(a["published_std"]) == 0.11
    assert float(a["delta"]) == pytest.approx(np.mean(inside) - 94.84)
    lo, hi = t_ci(inside)
    assert lo <= 94.84 <= hi and a["inside_ci"] == "1"
    b = rows[("ResNet-110", "+ MaxUp+Cutout")]
    assert float(b["delta"]) == pytest.approx(np.mean(outside) - 95.41)
    assert b["inside_ci"] == "0"
    md = render(table, "md", vs_paper=True)
    header = next(ln for ln in md.splitlines() if ln.startswith("| "))
    assert "+ Cutout paper" in header and "Δ" in header and "in 95% CI" in header
    line = next(ln for ln in md.splitlines() if ln.startswith("| ResNet-110"))
    assert "94.84 ± 0.11" in line and f"{np.mean(inside) - 94.84:+.2f}" in line
    assert "| yes |" in line and "| no |" in line


def test_table5_rows_are_m_and_order(tmp_path):
    recs = []
    for m, add in ((1, 0.0), (4, 1.5), (20, 0.7)):
        for model, off in (("resnet110", 0.0), ("wrn28_10", 8.0)):
            recs += [make_record(None, seed=s, m=m, model=model, dataset="cifar100",
                                 paper_table="5", test_acc=73.6 + off + add + 0.1 * s)
                     for s in range(5)]
    table = build_table(load_records(write_all(tmp_path, recs)), "5")
    assert [label for _, label in table.rows] == ["1", "4", "10", "20"]
    assert table.cell(2, 0).missing and table.cell(1, 0).n == 5
    assert table.best(0) == {1} and table.best(1) == {1}
    assert table.cell(1, 1).mean == pytest.approx(73.6 + 8.0 + 1.5 + 0.2)


def test_table8_envelope_cpu_scale_any_dataset(tmp_path):
    # certified accuracy at r = 0, 0.25, ..., 2.75 (the summary's radii)
    a = [80.0, 60.0, 40.0, 20.0, 10.0, 5.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    b = [78.0, 62.0, 45.0, 22.0, 9.0, 6.0, 3.0, 1.0, 0.5, 0.0, 0.0, 0.0]
    c = [85.0, 70.0, 50.0, 30.0, 20.0, 10.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.2]
    recs = [make_record(90.0, seed=0, dataset="digits", model="small_cnn", ops=["gaussian"],
                        certified=a),
            make_record(90.0, seed=1, dataset="digits", model="small_cnn", ops=["gaussian"],
                        certified=b),
            make_record(92.0, seed=0, m=4, dataset="digits", model="small_cnn",
                        ops=["gaussian"], certified=c)]
    df = load_records(write_all(tmp_path, recs))
    table = build_table(df, "8")
    assert [lab for _, lab in table.rows] == ["Gaussian aug. (m = 1)", "MaxUp+Gauss"]
    assert [c.key for c in table.columns] == T8_RADII
    for j in range(11):  # column j is radius 0.25 * (j + 1): index j + 1 of the summary
        # one setting (σ 0.25, m = 1) with two models: their mean, not the better seed
        assert table.cell(0, j).mean == pytest.approx((a[j + 1] + b[j + 1]) / 2)
        assert table.cell(0, j).n == 2
        assert table.cell(1, j).mean == c[j + 1] and table.cell(1, j).n == 1
    md = render(table, "md")
    # one model of MaxUp: nothing to test a difference on, so no bold
    assert "70.0 (n = 1)" in md and "**70.0" not in md and "digits, not the paper's cifar10" in md
    assert not table.paper and render(table, "md", vs_paper=True) == md
    ids = [t.id for t in tables_for(df)]
    assert "8" in ids and "sweep" in ids  # digits feeds no paper table 1-7


def test_regression_table8_is_the_envelope_over_sigma_of_per_sigma_means(tmp_path):
    """Issue 27, item 10: each Table 8 cell was the best model over every seed and σ of the
    method, n counted models, and every 0.0 tie was bold. Now: per setting (σ; m) the mean
    over its seeds of the per-image certified accuracy, the best setting per radius (named
    in the cell, n its models), images x models in the caption, bold only where a t-test
    over the models separates the rows (computed here by hand from the per-image radii)."""
    from scipy import stats as sps

    # per (m, sigma, seed): the certified radii of 5 images (None: wrong or abstained)
    radii = {(1, 0.25, 0): [0.3, 0.4, 0.6, None, None], (1, 0.25, 1): [0.3, 0.9, None, None,
                                                                           None],
             (1, 0.25, 2): [0.6, 0.7, 0.8, None, None],
             (1, 0.5, 0): [0.1, 0.6, 1.2, None, None], (1, 0.5, 1): [1.1, None, None, None,
                                                                       None],
             (1, 0.5, 2): [0.6, 1.3, None, None, None],
             (4, 0.25, 0): [0.3, 0.4, 0.6, 0.7, 0.3], (4, 0.25, 1): [0.5, 0.6, 0.3, 0.8, 0.4],
             (4, 0.25, 2): [0.3, 0.6, 0.9, 0.3, 0.6],
             (4, 0.5, 0): [1.2, 0.9, None, None, None], (4, 0.5, 1): [1.6, 0.8, 0.1, None,
                                                                        None],
             (4, 0.5, 2): [0.7, 1.4, None, None, None]}
    recs = certified_records(radii, model="small_cnn", ops=["gaussian"])
    table = build_table(load_records(write_all(tmp_path, recs)), "8")

    def acc(m, sigma, seed, r):
        return 100 * sum(x is not None and x >= r for x in radii[m, sigma, seed]) / 5

    for i, m in enumerate((1, 4)):
        for j, r in enumerate(T8_RADII):
            means = {s: np.mean([acc(m, s, k, r) for k in range(3)]) for s in (0.25, 0.5)}
            best = max(means.values())
            cell = table.cell(i, j)
            assert cell.mean == pytest.approx(best), (m, r)
            assert cell.n == 3
            sigma = min(s for s in (0.25, 0.5) if means[s] == best)  # the smaller on ties
            assert cell.setting == (f"σ = {sigma:g}" if best > 0 else "")  # 0: nobody's
    # r = 0.25: MaxUp σ 0.25 (100, 100, 100 %) vs Gaussian's best σ 0.5 (60, 20, 40 %): every
    # seed apart, bold; r = 0.5: MaxUp σ 0.25 (40, 60, 60) vs Gaussian σ 0.25 (40, 20, 60).
    assert table.best(0) == {1}
    gauss = [acc(1, 0.25, k, 0.5) for k in range(3)]
    maxup = [acc(4, 0.25, k, 0.5) for k in range(3)]
    p = sps.ttest_rel(maxup, gauss).pvalue
    assert table.cell(1, 1).mean > table.cell(0, 1).mean and p > 0.05
    assert table.best(1) == set()  # better on average, not beyond chance
    # from r = 1.75 on every cell is 0.0: a tie, never bold
    j0 = T8_RADII.index(1.75)
    assert all(table.cell(i, j).mean == 0.0 for i in (0, 1) for j in range(j0, 11))
    assert all(table.best(j) == set() for j in range(j0, 11))
    md = render(table, "md")
    assert md.count("**") == 2 + 2  # the caption and the one significant cell
    assert f"**{table.cell(1, 0).mean:.1f} (σ = 0.25; n = 3)**" in md
    assert "12 certified models in 4 settings, each model on 5 test images" in md
    assert "N = 1,000, α = 0.001" in md


def test_table8_seeds_of_one_arm_certified_at_two_sigmas_are_two_settings(tmp_path):
    """One trained arm (σ 0.25 in training): seeds 0-2 certified at σ 0.25 by one sweep, seeds
    3-5 at σ 0.5 by another. Two settings of three models each, not one of six; the cell is
    the better σ's mean."""
    from maxup.analysis.certified import settings

    at = {0.25: [60.0, 70.0, 65.0], 0.5: [80.0, 75.0, 90.0]}  # % certified at r = 0.25
    recs = []
    for sweep, sigma, first in (("a", 0.25, 0), ("b", 0.5, 3)):
        for k, v in enumerate(at[sigma]):
            rec = make_record(80.0, seed=first + k, sweep=sweep, dataset="digits",
                              model="small_cnn", ops=["gaussian"],
                              certified=[90.0, v] + [0.0] * 10)
            rec["config"]["certify"]["sigma"] = sigma
            rec["certification"]["sigma"] = sigma
            recs.append(restamp(rec))
    df = load_records(write_all(tmp_path, recs))
    assert df["arm_id"].nunique() == 1
    found = settings(df)
    assert [(s.sigma, sorted(s.models)) for s in found] == [(0.25, [0, 1, 2]), (0.5, [3, 4, 5])]
    cell = build_table(df, "8").cell(0, 0)
    assert cell.mean == pytest.approx(np.mean(at[0.5])) and cell.n == 3
    assert cell.setting == "σ = 0.5"


def test_regression_bold_needs_a_significant_difference(tmp_path):
    """Issue 27, item 9: bold marked the best mean of a column even when chance explains the
    difference. Now it needs p < 0.05 against every other row (scipy's tests here)."""
    from scipy import stats as sps

    close = {"resnet110": [94.0, 95.1, 94.4], "wrn28_10": [94.3, 94.9, 94.8]}
    recs = [make_record(None, seed=s, model=model, paper_table="3", test_acc=v)
            for model, vals in close.items() for s, v in enumerate(vals)]
    table = build_table(load_records(write_all(tmp_path, recs)), "3")
    rows = [label for _, label in table.rows]
    p = sps.ttest_rel(close["wrn28_10"], close["resnet110"]).pvalue
    assert p > 0.05 and table.best(0) == set()
    assert "**" not in render(table, "md").split("\n", 2)[2].split("\n_")[0]
    apart = {"resnet110": [94.0, 94.1, 94.3], "wrn28_10": [95.2, 95.4, 95.5]}
    recs = [make_record(None, seed=s, model=model, paper_table="3", test_acc=v)
            for model, vals in apart.items() for s, v in enumerate(vals)]
    table = build_table(load_records(write_all(tmp_path / "b", recs)), "3")
    rows = [label for _, label in table.rows]
    assert sps.ttest_rel(apart["wrn28_10"], apart["resnet110"]).pvalue < 0.05
    assert table.best(0) == {rows.index("WideResNet-28-10")}


def test_perplexity_lower_is_better(tmp_path):
    recs = [make_record(None, seed=s, m=m, dataset="ptb", model="awd_lstm", paper_table="6",
                        ops=["gaussian"], val_ppl=v + s * 0.1, test_ppl=v - 2 + s * 0.1)
            for m, v in ((1, 57.2), (2, 56.3)) for s in range(3)]
    table = build_table(load_records(write_all(tmp_path, recs)), "6")
    # rows: m = 1, the per-sequence control (no records here), MaxUp; columns: Params (M),
    # Valid, Test, Valid + dyn. eval, Test + dyn. eval
    assert [v for v, _ in table.rows] == ["baseline", "control", "maxup"]
    assert table.cell(1, 2).missing
    assert table.best(1) == {2} and table.best(2) == {2}
    assert table.cell(2, 2).mean == pytest.approx(54.3 + 0.1)


def test_generic_sweep_table(tmp_path):
    base = [90.0, 90.5, 91.0]
    mx = [92.0, 92.2, 92.9]
    recs = [make_record(None, seed=s, dataset="digits", model="small_cnn", sweep="quick",
                        ops=["gaussian"], test_acc=v, best_acc=v + 1)
            for s, v in enumerate(base)]
    recs += [make_record(None, seed=s, m=4, dataset="digits", model="small_cnn",
                         sweep="quick", ops=["gaussian"], test_acc=v, best_acc=v + 1)
             for s, v in enumerate(mx)]
    df = load_records(write_all(tmp_path, recs))
    tables = tables_for(df)
    assert [t.id for t in tables] == ["sweep"]
    t = tables[0]
    assert [lab for _, lab in t.rows] == ["m=1", "m=4"]
    assert t.cell(1, 4).mean == pytest.approx(np.mean(mx) - np.mean(base))
    paired = stats.ttest_rel(mx, base)  # seeds 0-2 in both arms
    assert t.cell(1, 5).mean == pytest.approx(paired.pvalue)
    ci = paired.confidence_interval(0.95)
    assert (t.cell(1, 4).ci_low, t.cell(1, 4).ci_high) == (pytest.approx(ci.low),
                                                           pytest.approx(ci.high))
    assert t.cell(1, 1).mean == pytest.approx(np.mean(mx) + 1)
    half = stats.t.ppf(0.975, len(mx) - 1) * np.std(mx, ddof=1) / np.sqrt(len(mx))
    assert t.cell(1, 3).ci_low == pytest.approx(np.mean(mx) - half)
    assert t.cell(1, 2).n == len(mx)
    md = render(t, "md")
    assert f"| 3 | [{np.mean(mx) - half:.2f}, {np.mean(mx) + half:.2f}] |" in md
    assert "Sweep quick" in md
    assert f"{np.mean(mx):.2f} ± {np.std(mx, ddof=1):.2f} (n = 3) †" in md
    assert (f"{np.mean(mx) - np.mean(base):+.2f} [{ci.low:+.2f}, {ci.high:+.2f}]" in md)
    assert f"{paired.pvalue:.3g} (paired, n = 3)" in md
    assert sweep_table(df, "quick").rows == t.rows


def test_published_transcription_spot_checks():
    assert PUBLISHED["3"][("wrn28_10", "maxup")].value == 97.18
    assert PUBLISHED["4"][("preact_resnet110", "maxup")].std == 0.26
    assert PUBLISHED["5"][(20, "resnet110")].value == 74.37
    assert PUBLISHED["2"][("proxyless_mobile", "maxup")].value == 77.17
    assert PUBLISHED["7"][("maxup", "final.test_ppl")].value == 60.19
    assert [PUBLISHED["8"][("maxup", r)].value for r in T8_RADII] == [
        74, 57, 49, 40, 35, 31, 27, 22, 19, 17, 15]
    assert PUBLISHED["1"][("maxup", "final.test_top5")].value == 94.2


def test_unknown_format_is_usage_error(tmp_path):
    recs, _ = table3_records()
    table = build_table(load_records(write_all(tmp_path, recs)), "3")
    with pytest.raises(UsageError, match="--format.*'html'.*md, latex, csv"):
        render(table, "html")


# ----------------------------------------------------------------------------------- figures
def _captured_figures(monkeypatch) -> dict:
    """Capture each figure as maxup.analysis.figures saves it (stem -> its axes' plotted
    data), then let it be written as usual."""
    from maxup.analysis import figures

    captured, save = {}, figures._save

    def spy(fig, out_dir, stem, *formats):
        axes = []
        for ax in fig.axes:
            def xy(line):
                return (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))

            lines = {ln.get_label(): xy(ln) for ln in ax.get_lines()
                     if not ln.get_label().startswith("_")}
            # an errorbar's label sits on its container: (data line, caps, bar collections)
            lines.update({c.get_label(): xy(c.lines[0]) for c in ax.containers if c.has_yerr})
            bars = {c.get_label(): [np.asarray(seg) for seg in c.lines[2][0].get_segments()]
                    for c in ax.containers if c.has_yerr}
            axes.append({"lines": lines, "errorbars": bars, "ylabel": ax.get_ylabel()})
        captured[stem] = axes
        return save(fig, out_dir, stem, *formats)

    monkeypatch.setattr(figures, "_save", spy)
    return captured


def test_figures_plot_the_right_arms_and_values(tmp_path, monkeypatch):
    """Each figure checked through the data it plots (not its pixels): accuracy vs m with
    95% t error bars per architecture, per-arm mean curves over seeds per epoch, and the
    certified-accuracy envelope (per method, the best σ of the per-σ mean curves)."""
    import matplotlib.image as mpimg
    from scipy.stats import t as student_t

    from maxup.analysis import write_figures

    recs, finals, hist = [], {}, {}
    for m, add in ((1, 0.0), (4, 1.0), (10, 0.5)):
        for model, off in (("resnet110", 0.0), ("wrn28_10", 5.0)):
            for s in range(3):
                acc = 70.0 + off + add + 0.3 * s + 0.2 * s * s  # unequal spread per seed
                rec = make_record(acc, seed=s, m=m, model=model, dataset="cifar100",
                                  sweep="t5", epochs=4, test_loss=1.0 + 0.1 * m + 0.05 * s)
                recs.append(rec)
                finals.setdefault((model, m), []).append(rec["final"]["test_acc"])
                hist.setdefault((model, m), []).append(rec["history"])

    def certified(s, m):  # at each radius the best model differs between the two seeds
        return [80 - 7 * i + 3 * (m > 1) + (2 if (i + s) % 2 else 0) for i in range(11)]

    recs += [make_record(90.0, seed=s, m=m, sweep="cert", dataset="digits", ops=["gaussian"],
                         certified=certified(s, m))
             for s in range(2) for m in (1, 4)]
    df = load_records(write_all(tmp_path / "res", recs))
    captured = _captured_figures(monkeypatch)
    paths = write_figures(df, tmp_path / "figs")
    names = {Path(p).name for p in paths}
    for stem in ("acc_vs_m_t5", "curves_t5", "certified_cert"):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names
    for p in paths:
        assert Path(p).stat().st_size > 1000
        if p.endswith(".png"):
            img = mpimg.imread(p)
            assert img.var() > 0
            colours = np.unique(img.reshape(-1, img.shape[-1])[:, :3].round(2), axis=0)
            assert len(colours) > 5

    # accuracy vs m: one line per architecture, x = m, y = mean, bars = t_{0.975,n-1} s/sqrt(n)
    (acc,) = captured["acc_vs_m_t5"]
    names = {"resnet110": "ResNet-110", "wrn28_10": "WideResNet-28-10"}  # the tables' names
    assert set(acc["lines"]) == set(names.values())
    for model in ("resnet110", "wrn28_10"):
        x, y = acc["lines"][names[model]]
        assert x.tolist() == [1, 4, 10]
        means = [np.mean(finals[(model, m)]) for m in (1, 4, 10)]
        assert y == pytest.approx(means)
        half = [student_t.ppf(0.975, 2) * np.std(finals[(model, m)], ddof=1) / np.sqrt(3)
                for m in (1, 4, 10)]
        segs = acc["errorbars"][names[model]]
        assert [seg[0][0] for seg in segs] == [1, 4, 10]
        assert [seg[1][1] - seg[0][1] for seg in segs] == pytest.approx([2 * h for h in half])
        assert [(seg[0][1] + seg[1][1]) / 2 for seg in segs] == pytest.approx(means)

    # training curves: per arm, each epoch's mean over its seeds of test_acc / test_loss
    acc_ax, loss_ax = captured["curves_t5"]
    assert (acc_ax["ylabel"], loss_ax["ylabel"]) == ("test accuracy (%)", "test loss (nats)")
    for (model, m), histories in hist.items():
        label = f"{names[model]}, m = {m} (n = 3)"
        for ax, key in ((acc_ax, "test_acc"), (loss_ax, "test_loss")):
            x, y = ax["lines"][label]
            assert x.tolist() == [1, 2, 3, 4]
            want = [np.mean([h[e][key] for h in histories]) for e in range(4)]
            assert y == pytest.approx(want), (label, key)
    assert len(acc_ax["lines"]) == 6

    # certified accuracy: per method, the envelope over σ of the per-σ mean over its models
    # at each radius (issue 27: it was the best single model); one σ here, so the mean
    (cert,) = captured["certified_cert"]
    assert set(cert["lines"]) == {"Gaussian aug. (m = 1)", "MaxUp+Gauss"}
    for label, m in (("Gaussian aug. (m = 1)", 1), ("MaxUp+Gauss", 4)):
        x, y = cert["lines"][label]
        assert x == pytest.approx(RADII[:11])
        assert y.tolist() == [(certified(0, m)[i] + certified(1, m)[i]) / 2 for i in range(11)]
        assert y.tolist() == [81 - 7 * i + 3 * (m > 1) for i in range(11)]


# --------------------------------------------------------------------------------------- cli
def tables_args(results, **kw):
    parser = argparse.ArgumentParser()
    configure_tables(parser)
    argv = [str(results)]
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, str(v)]
    return parser.parse_args(argv)


def test_cli_tables_prints_tables_counts_and_missing(tmp_path, capsys):
    recs, _ = table3_records()
    recs.append(make_record(None, seed=9, status="failed"))
    write_all(tmp_path / "res", recs)
    (tmp_path / "res" / "s" / "records" / "bad.json").write_text("{")
    assert run_tables(tables_args(tmp_path / "res")) == 0
    out = capsys.readouterr().out
    assert "Table 3" in out and "ResNet-110" in out
    assert "21 completed, 1 failed (non-finite loss: 1), 0 running" in out
    assert "1 files skipped" in out
    assert "missing cells (1): WideResNet-28-10 / + MaxUp+Cutout" in out


_LATEX_STAT = re.compile(r"^(?:\\textbf\{)?(\d+\.\d+) \$\\pm\$ (\d+\.\d+) \(n = (\d+)\)"
                         r"(?: †)?\}?$")


def _latex_body(tex: str) -> tuple[list[str], list[list[str]]]:
    """Header and body cells of a booktabs table (``a & b \\\\`` lines between the rules)."""
    lines = tex.splitlines()
    top, mid, bottom = (lines.index(r) for r in (r"\toprule", r"\midrule", r"\bottomrule"))
    assert top < mid < bottom

    def cells(line: str) -> list[str]:
        assert line.endswith(r" \\")
        return [c.strip() for c in line[:-3].split(" & ")]

    return cells(lines[top + 1]), [cells(ln) for ln in lines[mid + 1:bottom]]


def test_cli_tables_out_formats_and_vs_paper(tmp_path, capsys):
    """--vs-paper LaTeX: every number in it (ours: mean ± std (n); the paper's; Δ; inside
    the CI) parsed back and compared with the CSV of the same table and with values
    computed here from the seeds and the published data."""
    recs, vals = table3_records(epochs=200)  # the paper's protocol: published values shown
    write_all(tmp_path / "res", recs)
    for fmt in ("latex", "csv"):
        args = tables_args(tmp_path / "res", table=3, format=fmt, vs_paper=True,
                           out=tmp_path / "out")
        assert run_tables(args) == 0
        if fmt == "latex":
            tex = (tmp_path / "out" / "table3_cifar10.tex").read_text()
            assert tex in capsys.readouterr().out
    rows = {(r["row"], r["column"]): r for r in csv.DictReader(io.StringIO(
        (tmp_path / "out" / "table3_cifar10.csv").read_text()))}
    header, body = _latex_body(tex)
    columns = ["+ Cutout", "+ MaxUp+Cutout"]
    assert header == ["Model"] + [f"{c} {part}" for c in columns
                                  for part in ("paper", "ours", r"$\Delta$", r"in 95\% CI")]
    models = {"ResNet-110": "resnet110", "PreAct-ResNet-110": "preact_resnet110",
              "WideResNet-28-10": "wrn28_10"}
    assert [line[0] for line in body] == list(models)
    checked = 0
    for line in body:
        label = line[0]
        for j, column in enumerate(columns):
            paper, ours, delta, inside = line[1 + 4 * j:5 + 4 * j]
            row = rows[(label, column)]
            key = (models[label], "baseline" if j == 0 else "maxup")
            pub = PUBLISHED["3"][key]
            assert paper == rf"{pub.value:.2f} $\pm$ {pub.std:.2f}"
            assert float(row["published"]) == pub.value
            seeds = vals.get((models[label], 1 if j == 0 else 10))
            if seeds is None:  # the missing WRN MaxUp cell
                assert (ours, delta, row["mean"]) == ("---", "---", "")
                continue
            got = _LATEX_STAT.match(ours)
            assert got, ours
            mean, std, n = float(got[1]), float(got[2]), int(got[3])
            x = np.asarray(seeds)
            assert (mean, std, n) == (round(x.mean(), 2), round(x.std(ddof=1), 2), len(x))
            assert mean == round(float(row["mean"]), 2) and std == round(float(row["std"]), 2)
            assert n == int(row["n"])
            assert float(delta) == round(x.mean() - pub.value, 2)
            assert float(delta) == round(float(row["delta"]), 2)
            lo, hi = t_ci(x)
            want = ("yes" if lo <= pub.value <= hi else "no") if len(x) >= 5 else "n/a"
            assert inside == want
            assert row["inside_ci"] == {"yes": "1", "no": "0", "n/a": ""}[inside]
            checked += 1
    assert checked == 5


@pytest.mark.parametrize("kw, flag", [({"table": 99}, "--table"),
                                      ({"format": "html"}, "--format")])
def test_cli_bad_flags_are_usage_errors(tmp_path, kw, flag):
    recs, _ = table3_records()
    write_all(tmp_path / "res", recs)
    with pytest.raises(UsageError) as exc:
        run_tables(tables_args(tmp_path / "res", **kw))
    msg = str(exc.value)
    assert flag in msg and str(list(kw.values())[0]) in msg and "allowed" in msg
    assert "\n" not in msg


def test_cli_no_records_is_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no trial records"):
        run_tables(tables_args(tmp_path / "empty"))


def test_cli_figures(tmp_path, capsys):
    recs = [make_record(80.0 + m + s * 0.2, seed=s, m=m, sweep="q", dataset="digits")
            for m in (1, 4) for s in range(2)]
    write_all(tmp_path / "res", recs)
    parser = argparse.ArgumentParser()
    configure_figures(parser)
    args = parser.parse_args([str(tmp_path / "res"), "--out", str(tmp_path / "figs")])
    assert run_figures(args) == 0
    out = capsys.readouterr().out
    assert "acc_vs_m_q.png" in out and (tmp_path / "figs" / "curves_q.pdf").exists()


def test_copied_record_counted_once(tmp_path):
    rec = make_record(None, test_acc=91.0)
    write(tmp_path / "a", rec)
    write(tmp_path / "b", rec)  # the same trial in a copied results tree
    with pytest.warns(RecordSkipped, match="appears twice"):
        df = load_records(tmp_path)
    assert len(df) == 1 and summary(df)["duplicates"] == 1


def test_cli_table_sweep_and_csv_out(tmp_path, capsys):
    recs = [make_record(None, seed=s, m=m, sweep="fashion", dataset="fashion_mnist",
                        model="small_cnn", ops=["gaussian"], test_acc=85.0 + m * 0.1 + s * 0.05)
            for m in (1, 4) for s in range(2)]
    write_all(tmp_path / "res", recs)
    args = tables_args(tmp_path / "res", table="sweep", format="csv", out=tmp_path / "out")
    assert run_tables(args) == 0
    out = tmp_path / "out" / "sweep_fashion_fashion_mnist.csv"  # the dataset in its name
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    cell = next(r for r in rows if r["row"] == "m=4" and r["column"].startswith("final"))
    assert float(cell["mean"]) == pytest.approx(85.4 + 0.025)
    assert "Sweep fashion" not in capsys.readouterr().err


def test_regression_resnet50_of_imagenet_sweep_fills_table1(tmp_path):
    """The ImageNet sweep marks its records paper_table "2"; its ResNet-50 rows are Table 1's."""
    recs = [make_record(78.6, model="resnet50", dataset="imagenet", ops=["cutmix"],
                        paper_table="2", test_top5=94.0),
            make_record(78.9, m=4, model="resnet50", dataset="imagenet", ops=["cutmix"],
                        paper_table="2", test_top5=94.2),
            make_record(80.0, m=4, model="resnet101", dataset="imagenet", ops=["cutmix"],
                        paper_table="2", test_top5=95.0)]
    df = load_records(write_all(tmp_path, recs))
    from maxup.analysis.specs import SPECS

    t1 = build_table(df, SPECS["1"])
    assert [t1.cell(i, 0).mean for i in range(2)] == [78.6, 78.9]
    t2 = build_table(df, SPECS["2"])
    row = [key for key, _ in t2.rows].index("resnet101")
    assert t2.cell(row, 1).mean == 80.0


# --------------------------------------------------------------- cells are arms (issue rules)
def _sweep_tree(root: Path, name: str, recs: list[dict]) -> None:
    """Store records content-addressed under ``root/trials`` with a manifest for ``name``."""
    from maxup import identity

    entries = []
    for r in recs:
        tid = identity.trial_id(r["config"])
        path = root / "trials" / tid / "record.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(r, trial_id=tid)))
        entries.append({"trial_id": tid, "arm_id": identity.arm_id(r["config"]),
                        "axes": r["axes"]})
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "sweep.json").write_text(json.dumps({
        "schema": "maxup.sweep/1", "name": name, "paper_table": None, "trials": entries,
        "trials_root": "../trials"}))


def test_regression_shared_trials_count_once_in_every_table(tmp_path):
    base = [90.0, 90.4, 90.9, 91.1, 91.6]
    mx = [92.0, 92.3, 92.1, 93.0, 92.6]
    recs = {m: [make_record(None, seed=s, m=m, dataset="digits", model="small_cnn",
                            ops=["gaussian"], test_acc=v) for s, v in enumerate(vals)]
            for m, vals in ((1, base), (4, mx))}
    _sweep_tree(tmp_path, "first", recs[1] + recs[4])
    _sweep_tree(tmp_path, "second", recs[4])  # shares every m = 4 trial
    df = load_records(tmp_path)
    assert len(df) == 15  # a row per trial per sweep
    tables = {t.sweep: t for t in tables_for(df)}
    first, second = tables["first"], tables["second"]
    assert [first.cell(i, 0).n for i in range(2)] == [5, 5]
    assert second.cell(0, 0).n == 5 and second.cell(0, 0).mean == pytest.approx(np.mean(mx))
    agg = aggregate(df).set_index("config.maxup.m")
    assert agg.loc[4, "n"] == 5 and agg.loc[4, "std"] == pytest.approx(np.std(mx, ddof=1))
    cmp = compare(df)
    assert cmp["n"].tolist() == [5] and cmp["base_n"].tolist() == [5]
    assert cmp["n_pairs"].tolist() == [5]  # a shared trial is one seed, paired once
    assert cmp["p_value"].iloc[0] == pytest.approx(stats.ttest_rel(mx, base).pvalue)


def test_regression_baseline_is_the_exact_counterpart_never_pooled(tmp_path):
    # Two m = 1 arms that differ only in maxup.bn: each MaxUp arm compares with its own.
    recs, truth = [], {}
    for bn, b_vals, m_vals in (("batch_stats", [80.0, 80.5, 81.0], [81.0, 81.5, 82.0]),
                               ("frozen", [60.0, 60.5, 61.0], [51.0, 51.5, 52.0])):
        for m, vals in ((1, b_vals), (4, m_vals)):
            for s, v in enumerate(vals):
                r = make_record(None, seed=s, m=m, dataset="digits", model="small_cnn",
                                ops=["gaussian"], test_acc=v)
                r["config"]["maxup"]["bn"] = bn
                recs.append(restamp(r))
        truth[bn] = np.mean(m_vals) - np.mean(b_vals)
    df = load_records(write_all(tmp_path, recs))
    cmp = compare(df).set_index("config.maxup.bn")
    for bn, diff in truth.items():
        assert cmp.loc[bn, "diff"] == pytest.approx(diff)  # +1.0 and -9.0
        assert cmp.loc[bn, "base_n"] == 3 and cmp.loc[bn, "n_pairs"] == 3
        # Every seed differs by exactly the same amount: the paired t is undefined.
        assert math.isnan(cmp.loc[bn, "p_value"])
        assert "no variance" in cmp.loc[bn, "undefined"]
    t = sweep_table(df)
    deltas = {label: t.cell(i, 4).mean for i, (_, label) in enumerate(t.rows)
              if not t.cell(i, 4).text}
    assert sorted(round(v, 6) for v in deltas.values()) == [-9.0, 1.0]


def test_missing_baseline_says_so(tmp_path):
    recs = [make_record(None, seed=s, m=4, dataset="digits", model="small_cnn",
                        ops=["gaussian"], test_acc=90.0 + s) for s in range(3)]
    other = make_record(None, seed=0, m=1, dataset="digits", model="small_cnn",
                        ops=["gaussian"], test_acc=80.0)
    other["config"]["optim"]["lr"] = 0.05  # an m = 1 arm, but not this arm's counterpart
    df = load_records(write_all(tmp_path, [*recs, restamp(other)]))
    assert compare(df).empty
    t = sweep_table(df)
    texts = {label: render(t, "md").split(label)[1].splitlines()[0] for _, label in t.rows}
    mx_row = next(i for i, (_, lab) in enumerate(t.rows) if "m=4" in lab)
    assert t.cell(mx_row, 4).text == "no baseline" and t.cell(mx_row, 5).text == "no baseline"
    assert any("no baseline" in v for v in texts.values())
    rows = list(csv.DictReader(io.StringIO(render(t, "csv"))))
    assert all(r["base_diff"] == "" for r in rows)


def test_nan_and_failed_seeds_are_shown_against_their_arm(tmp_path):
    good = [94.1, 94.3, 94.2]
    recs = [make_record(None, seed=s, m=1, paper_table="3", test_acc=v)
            for s, v in enumerate(good)]
    recs.append(make_record(None, seed=3, m=1, paper_table="3", test_acc=float("nan")))
    recs.append(make_record(None, seed=4, m=1, paper_table="3", status="failed"))  # diverged
    crashed = make_record(None, seed=5, m=1, paper_table="3", status="failed")
    crashed["failure"] = {"reason": "worker died"}
    recs.append(crashed)
    df = load_records(write_all(tmp_path, recs))
    table = build_table(df, "3")
    cell = table.cell(0, 0)
    assert (cell.n, cell.n_diverged, cell.n_failed, cell.n_planned) == (3, 2, 1, 6)
    assert cell.mean == pytest.approx(np.mean(good))
    assert cell.std == pytest.approx(np.std(good, ddof=1))
    text = f"{np.mean(good):.2f} ± {np.std(good, ddof=1):.2f} (n = 3; 2 diverged, 1 failed) †"
    assert text in render(table, "md")
    assert text.replace("±", r"$\pm$").replace("†", "") in render(table, "latex")
    row = next(r for r in csv.DictReader(io.StringIO(render(table, "csv")))
               if r["row"] == "ResNet-110" and r["column"] == "+ Cutout")
    assert (row["n"], row["n_diverged"], row["n_failed"], row["n_planned"]) == (
        "3", "2", "1", "6")


def test_several_arms_in_one_cell_are_each_shown_none_chosen(tmp_path):
    lo, hi = [94.0, 94.1, 94.2], [95.0, 95.1, 95.2]
    recs = []
    for lr, vals in ((0.1, lo), (0.05, hi)):
        for s, v in enumerate(vals):
            r = make_record(None, seed=s, paper_table="3", test_acc=v)
            r["config"]["optim"]["lr"] = lr
            recs.append(restamp(r))
    table = build_table(load_records(write_all(tmp_path, recs)), "3")
    cell = table.cell(0, 0)
    assert len(cell.arms) == 2 and table.best(0) == set()
    md = render(table, "md")
    for vals in (lo, hi):
        assert f"{np.mean(vals):.2f} ± {np.std(vals, ddof=1):.2f} (n = 3)" in md
    assert "holds 2 arms" in md and "optim.lr=0.1" in md and "optim.lr=0.05" in md
    rows = [r for r in csv.DictReader(io.StringIO(render(table, "csv")))
            if r["row"] == "ResNet-110" and r["column"] == "+ Cutout"]
    assert sorted(float(r["mean"]) for r in rows) == pytest.approx([np.mean(lo), np.mean(hi)])


def test_vs_paper_withholds_a_published_number_when_not_comparable(tmp_path):
    recs = [make_record(None, seed=s, paper_table="3", test_acc=94.0 + 0.1 * s, epochs=3)
            for s in range(5)]
    table = build_table(load_records(write_all(tmp_path, recs)), "3", vs_paper=True)
    cell = table.cell(0, 0)
    assert cell.published is None and cell.not_comparable == "train.epochs = 3 (paper: 200)"
    md = render(table, "md", vs_paper=True)
    assert md.count("train.epochs = 3 (paper: 200)") == 1 and "| not comparable |" in md
    assert "94.84" not in md


def test_inside_ci_needs_five_seeds(tmp_path):
    recs = [make_record(None, seed=s, paper_table="3", test_acc=v, epochs=200)
            for s, v in enumerate([94.7, 94.9])]
    cell = build_table(load_records(write_all(tmp_path, recs)), "3").cell(0, 0)
    assert cell.published.value == 94.84 and cell.inside_ci is None
    assert cell.ci_low < 94.84 < cell.ci_high  # inside, but n = 2 decides nothing


def test_table8_published_values_sit_at_the_papers_radii():
    # The paper's Table 8 columns: r = 0.25, 0.5, ..., 2.75.
    cohen = dict(zip(T8_RADII, (60, 43, 34, 23, 17, 14, 12, 10, 8, 6, 4)))
    ours = dict(zip(T8_RADII, (74, 57, 49, 40, 35, 31, 27, 22, 19, 17, 15)))
    assert PUBLISHED["8"][("baseline", 0.25)].value == 60 == cohen[0.25]
    assert PUBLISHED["8"][("maxup", 2.75)].value == 15 == ours[2.75]
    assert all(PUBLISHED["8"][("maxup", r)].value == v for r, v in ours.items())
    assert all(PUBLISHED["8"][("baseline", r)].value == v for r, v in cohen.items())
    assert ("maxup", 0.0) not in PUBLISHED["8"]


def test_table8_per_dataset_and_from_per_image_rows(tmp_path):
    def rows(radii_correct):
        return [{"index": i, "label": 0, "prediction": 0 if c else 1, "radius": r,
                 "correct": c, "seconds": 1.0} for i, (r, c) in enumerate(radii_correct)]

    cifar = make_record(90.0, seed=0, certified=[0.0] * 12)
    cifar["certification"]["rows"] = rows([(2.8, True), (0.3, True), (1.0, False), (0.0, True)])
    digits = make_record(90.0, seed=0, dataset="digits", model="small_cnn", certified=[99.0] * 12)
    df = load_records(write_all(tmp_path, [cifar, digits]))
    t8 = [t for t in tables_for(df) if t.id == "8"]
    assert len(t8) == 2 and t8[0].paper and not t8[1].paper and "digits" in t8[1].title
    # From the rows: correct and radius >= r, over 4 images.
    assert t8[0].cell(0, 0).mean == 50.0  # r = 0.25: radii 2.8, 0.3
    assert t8[0].cell(0, 10).mean == 25.0  # r = 2.75: radius 2.8
    assert t8[1].cell(0, 0).mean == 99.0  # the digits table keeps its own records


def test_cell_rule_three_arms_in_order_of_appearance_never_ranked_by_result(tmp_path):
    """The rule that replaced picking one arm per cell (issue 16 pins it): a cell holding
    several arms shows each of them, in the order their records appear (never sorted or
    picked by result), never ranks for bold, and a single-arm cell in the same column does.
    Four seeds per arm: n = 4 < 5 is marked †."""
    lrs = (0.1, 0.05, 0.02)

    def arm_records(values_by_lr):
        out = []
        for lr in lrs:
            for s, v in enumerate(values_by_lr[lr]):
                r = make_record(None, seed=s, paper_table="3", test_acc=v)
                r["config"]["optim"]["lr"] = lr
                out.append(restamp(r))
        out += [make_record(None, seed=s, model="wrn28_10", paper_table="3",
                            test_acc=93.0 + 0.1 * s) for s in range(5)]
        # a second single-arm cell, so that the column's best has a row to beat
        out += [make_record(None, seed=s, model="preact_resnet110", paper_table="3",
                            test_acc=v) for s, v in enumerate((90.0, 90.3, 89.9, 90.2, 90.1))]
        return out

    # Which arm the loader meets first depends on the stored files, not on results: read
    # that order first, then give the first arm the middle result and the last the lowest,
    # so the shown order is sorted by result neither way.
    probe = load_records(write_all(tmp_path / "probe", arm_records({lr: [0.0] * 4
                                                                    for lr in lrs})))
    r110 = probe[probe["config.model.name"] == "resnet110"]
    lr_of = dict(zip(r110["arm_id"], r110["config.optim.lr"]))
    order = [lr_of[a] for a in r110["arm_id"].unique()]
    assert sorted(order) == sorted(lrs)
    base = dict(zip(order, (95.0, 96.0, 94.0)))
    values = {lr: [base[lr] + 0.1 * s for s in range(4)] for lr in lrs}
    df = load_records(write_all(tmp_path / "res", arm_records(values)))

    table = build_table(df, "3")
    labels = [label for _, label in table.rows]
    i110, iwrn = labels.index("ResNet-110"), labels.index("WideResNet-28-10")
    cell = table.cell(i110, 0)
    assert [lr_of[a.arm_id] for a in cell.arms] == order
    assert [a.mean for a in cell.arms] == pytest.approx([np.mean(values[lr]) for lr in order])
    assert [a.n for a in cell.arms] == [4, 4, 4] and cell.n == 12
    # never ranked: the WRN cell (93.2, beating PreAct's 90.1 at p < 0.05) is the column's
    # best though the ResNet cell holds 96.15
    assert table.best(0) == {iwrn}
    texts = [f"{np.mean(values[lr]):.2f} ± {np.std(values[lr], ddof=1):.2f} (n = 4) †"
             for lr in order]
    md = render(table, "md")
    line = next(ln for ln in md.splitlines() if ln.startswith("| ResNet-110"))
    assert f"| {' / '.join(texts)} |" in line and "**" not in line
    wrn = np.asarray([93.0 + 0.1 * s for s in range(5)])
    assert f"**{wrn.mean():.2f} ± {wrn.std(ddof=1):.2f} (n = 5)**" in md
    note = next(n for n in table.notes if "holds 3 arms" in n)
    assert note.endswith("; ".join(f"optim.lr={lr}" for lr in order))
    rows = [r for r in csv.DictReader(io.StringIO(render(table, "csv")))
            if r["column"] == "+ Cutout"]
    mine = [r for r in rows if r["row"] == "ResNet-110"]
    assert [r["arm"] for r in mine] == ["1", "2", "3"]
    assert [float(r["mean"]) for r in mine] == pytest.approx(
        [np.mean(values[lr]) for lr in order])
    assert [r["best"] for r in mine] == ["0", "0", "0"]
    assert [r["best"] for r in rows if r["row"] == "WideResNet-28-10"] == ["1"]


def test_running_seed_is_counted_never_averaged(tmp_path):
    """An interim record (a sweep still running) carries the metrics of its last finished
    epoch as its ``final``, as the engine writes it; it is counted as running against its arm
    and never enters the mean, the std or n."""
    good = [94.1, 94.3, 94.2]
    recs = [make_record(None, seed=s, paper_table="3", test_acc=v) for s, v in enumerate(good)]
    interim = make_record(50.0, seed=3, paper_table="3", status="running")
    interim["final"] = dict(interim["history"][-1])  # 50.3: far from the finished seeds
    recs.append(interim)
    table = build_table(load_records(write_all(tmp_path, recs)), "3")
    cell = table.cell(0, 0)
    assert (cell.n, cell.n_running, cell.n_diverged, cell.n_failed, cell.n_planned) == (
        3, 1, 0, 0, 4)
    assert cell.mean == pytest.approx(np.mean(good))
    assert cell.std == pytest.approx(np.std(good, ddof=1))
    text = f"{np.mean(good):.2f} ± {np.std(good, ddof=1):.2f} (n = 3; 1 running) †"
    assert text in render(table, "md")
