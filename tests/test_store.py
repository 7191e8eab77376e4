"""The storage contract (maxup.store): one layout, one reader, and every command that reads a
storage telling the same truth about it. Storages are crafted here file by file; the right
answers (which files are unusable, the counts, the means, Welch's p) are computed here,
independently of the reader, with numpy and scipy."""

from __future__ import annotations

import argparse
import ast
import copy
import io
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_analysis import make_record

from maxup import identity, records, store
from maxup.analysis import load_records, render, summary, sweep_table, tables_for
from maxup.analysis.report import verdicts
from maxup.cli.tables import configure as configure_tables
from maxup.cli.tables import run as run_tables
from maxup.platform.status import render as render_status
from maxup.platform.status import sweep_status

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers
def _store(root: Path, name: str, recs: list[dict], paper_table=None, extra=()) -> dict:
    """Store records content-addressed under root/trials with sweep NAME's manifest (written
    by hand, as the documented format says); ``extra``: manifest entries of trials with no
    record. Returns trial id -> record."""
    root.mkdir(parents=True, exist_ok=True)
    entries, out = [], {}
    for r in recs:
        tid = identity.trial_id(r["config"])
        r = dict(r, trial_id=tid, sweep=name)
        path = root / "trials" / tid / "record.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))
        entries.append({"trial_id": tid, "arm_id": identity.arm_id(r["config"]),
                        "axes": r["axes"]})
        out[tid] = r
    entries += list(extra)
    (root / name).mkdir(exist_ok=True)
    (root / name / "sweep.json").write_text(json.dumps({
        "schema": "maxup.sweep/1", "name": name, "paper_table": paper_table,
        "axes": ["maxup.m", "seed"], "trials_root": "../trials", "trials": entries}))
    return out


def _digits(acc, seed, m=1, **kw) -> dict:
    return make_record(None, seed=seed, m=m, dataset="digits", model="small_cnn",
                       ops=["gaussian"], test_acc=acc, **kw)


def _args(results, **kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_tables(parser)
    argv = [str(results)]
    for k, v in kw.items():
        if v is True:
            argv.append(f"--{k.replace('_', '-')}")
        else:
            argv += [f"--{k.replace('_', '-')}", str(v)]
    return parser.parse_args(argv)


def _quiet_load(target):
    """load_records without letting its warnings (each names an unusable file) fail a test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_records(target)


def _named(df) -> set[str]:
    """The unusable files a frame's load named (corrupt, stray, duplicate, manifest)."""
    return {Path(p).as_posix() for p in summary(df)["skipped_files"]}


# A sweep of six digits trials, m = 1 and m = 4, three seeds each; then each kind of damage
# a record can take, one trial each. What each file is, is decided here, not by the reader.
def _damaged_storage(tmp_path: Path):
    root = tmp_path / "st"
    recs = [_digits(90.0 + s, s, m) for m in (1, 4) for s in range(3)]
    recs += [_digits(91.0, s, 1) for s in range(3, 14)]  # eleven trials to damage
    stored = _store(root, "sw", recs)
    ids = list(stored)
    victims = ids[6:]

    def path(tid):
        return root / "trials" / tid / "record.json"

    good = json.dumps(stored[victims[0]])
    kinds = {}

    def damage(tid, kind, text=None, edit=None):
        if edit is not None:
            doc = copy.deepcopy(stored[tid])
            edit(doc)
            text = json.dumps(doc)
        if isinstance(text, bytes):
            path(tid).write_bytes(text)
        else:
            path(tid).write_text(text)
        kinds[tid] = kind

    damage(victims[0], "truncated", good[: len(good) // 2])
    damage(victims[1], "empty", "")
    damage(victims[2], "not an object", "[1, 2, 3]")
    damage(victims[3], "binary", b"\xff\xfe\x00garbage")
    damage(victims[4], "schema", edit=lambda d: d.update(schema="maxup.trial/2"))
    damage(victims[5], "no config", edit=lambda d: d.pop("config"))
    damage(victims[6], "bad status", edit=lambda d: d.update(status="done"))
    damage(victims[7], "history type", edit=lambda d: d.update(history={"a": 1}))
    damage(victims[8], "config edited",
           edit=lambda d: d["config"]["optim"].update(lr=0.5))  # id no longer matches
    damage(victims[9], "id field edited", edit=lambda d: d.update(trial_id="0" * 12))
    damage(victims[10], "invalid metric", edit=lambda d: d["final"].update(test_acc=150.0))
    # A stray: a later copy of a good record elsewhere under the root, with another value.
    copy_of = dict(stored[ids[0]], updated="2030-01-01T00:00:00Z",
                   final=dict(stored[ids[0]]["final"], test_acc=10.0))
    stray = root / "backup" / "records" / f"{ids[0]}.json"
    stray.parent.mkdir(parents=True)
    stray.write_text(json.dumps(copy_of))
    return root, stored, kinds, stray


# --------------------------------------------------------------------------- one truth
def test_regression_every_reader_names_the_same_corrupt_records(tmp_path):
    """`maxup tables ROOT` named 16 of 19 kinds of corrupt record, `maxup tables ROOT/<sweep>`
    8 (the rest were "planned trials not run yet") and `maxup status` none (bad metrics were
    completed, truncated records pending). Every reader now names every damaged record."""
    root, stored, kinds, stray = _damaged_storage(tmp_path)
    corrupt = {t for t, k in kinds.items() if k != "invalid metric"}
    invalid = {t for t, k in kinds.items() if k == "invalid metric"}
    assert len(corrupt) == 10
    want = {(root / "trials" / t / "record.json").as_posix() for t in corrupt}

    from_root = _quiet_load(root)
    from_sweep = _quiet_load(root / "sw")
    assert _named(from_root) == want | {stray.as_posix()}
    assert _named(from_sweep) == want  # the stray lies outside the sweep's folder
    for df in (from_root, from_sweep):
        s = summary(df)
        assert (s["completed"], s["failed"], s["corrupt"], s["pending"]) == (6, 1, 10, 0)
        assert s["failure_reasons"] == {"invalid record": 1}
        rows = df[df["sweep"] == "sw"].set_index("trial_id")
        assert set(rows.index[rows["status"] == "corrupt"]) == corrupt
        assert set(rows.index[rows["status"] == "failed"]) == invalid

    st = sweep_status(str(root / "sw"))
    by = {t.trial_id: t.status for t in st.trials}
    assert {t for t, v in by.items() if v == "corrupt"} == corrupt
    assert {t for t, v in by.items() if v == "failed"} == invalid
    assert st.count("completed") == 6 and st.count("pending") == 0
    text = "\n".join(render_status(st))
    assert text.splitlines()[0].endswith("6 completed, 0 running, 1 failed, 0 pending, "
                                         "10 corrupt")
    for tid in corrupt:
        assert f"trials/{tid}/record.json" in text
    assert "invalid record: final.test_acc is 150.0" in text

    # The same words in every reader: the status line of a file is the loader's warning.
    problems = {p.path: p.message for p in store.read_view(root / "sw").problems}
    for p in st.problems:
        assert problems[p.path] == p.message


def test_regression_record_whose_trial_id_no_longer_matches_its_config_is_excluded(tmp_path):
    """A record whose config was edited after it was written (its trial_id no longer the
    config's) was used silently as a phantom arm; it is named and counted as corrupt."""
    root = tmp_path / "st"
    stored = _store(root, "sw", [_digits(90.0 + s, s) for s in range(3)])
    tid = next(iter(stored))
    doc = stored[tid]
    doc["config"]["optim"]["lr"] = 0.7
    (root / "trials" / tid / "record.json").write_text(json.dumps(doc))
    df = _quiet_load(root)
    table = sweep_table(df, "sw")
    assert len(table.rows) == 1  # no phantom lr = 0.7 arm
    cell = table.cell(0, 0)
    assert (cell.n, cell.n_corrupt, cell.n_planned) == (2, 1, 3)
    assert cell.mean == pytest.approx(np.mean([91.0, 92.0]))  # seeds 1 and 2
    assert "(n = 2; 1 corrupt)" in render(table, "md")
    (p,) = store.read_view(root).problems
    assert "trial id mismatch" in p.message and identity.trial_id(doc["config"]) in p.message


def test_regression_a_later_copy_elsewhere_never_replaces_the_stored_record(tmp_path):
    """A later copy under backup/records/ replaced the stored record in one sweep's table and
    not in another's listing the same trial, and the summary said "1 duplicate copies
    ignored" about the one it used. A storage's record is trials/<id>/record.json: the copy
    is a stray, named, used by no table."""
    root = tmp_path / "st"
    recs = [_digits(90.0 + s, s, m) for m in (1, 4) for s in range(3)]
    stored = _store(root, "a", recs)
    _store(root, "b", recs[3:])  # b shares every m = 4 trial
    tid = identity.trial_id(recs[3]["config"])
    copy_of = dict(stored[tid], updated="2031-01-01T00:00:00Z",
                   final=dict(stored[tid]["final"], test_acc=5.0))
    backup = root / "backup" / "records" / f"{tid}.json"
    backup.parent.mkdir(parents=True)
    backup.write_text(json.dumps(copy_of))
    df = _quiet_load(root)
    mx = [90.0, 91.0, 92.0]  # the stored m = 4 records, not the copy's 5.0
    for name in ("a", "b"):
        t = sweep_table(df, name)
        row = next(i for i, (_, lab) in enumerate(t.rows) if "m=4" in lab or lab == "all")
        assert t.cell(row, 0).mean == pytest.approx(np.mean(mx)), name
    s = summary(df)
    assert s["strays"] == 1 and s["duplicates"] == 0
    assert backup.as_posix() in _named(df)


def test_regression_summary_counts_trials_and_every_level_agrees(tmp_path, capsys):
    """The summary counted trial×sweep rows ("60 completed" for 50 trials) and n_planned was
    6 from the root, 5 from the sweep folder. The same storage loaded from the root, from a
    sweep's folder and through `maxup status` now gives the same counts."""
    root = tmp_path / "st"
    recs = [_digits(90.0 + s, s, m) for m in (1, 4) for s in range(4)]
    recs[1]["status"] = "failed"
    recs[1]["failure"] = {"reason": "non-finite loss"}
    missing = copy.deepcopy(recs[0]["config"])
    missing["seed"] = 9
    extra = [{"trial_id": identity.trial_id(missing), "arm_id": identity.arm_id(missing),
              "axes": {"maxup.m": 1, "seed": 9}}]
    _store(root, "a", recs, extra=extra)
    _store(root, "b", recs[4:])  # shares the four m = 4 trials
    # another sweep planned a fifth m = 4 seed: it is that sweep's, not a's
    more = copy.deepcopy(recs[4]["config"])
    more["seed"] = 7
    _store(root, "c", [], extra=[{"trial_id": identity.trial_id(more),
                                  "arm_id": identity.arm_id(more),
                                  "axes": {"maxup.m": 4, "seed": 7}}])
    unique = 8 + 1 + 1  # eight records, a's pending seed 9, c's pending seed 7
    s_root = summary(_quiet_load(root))
    assert s_root["trials"] == unique
    assert (s_root["completed"], s_root["failed"], s_root["pending"]) == (7, 1, 2)

    def sweep_counts(df):
        t = sweep_table(df, "a")
        return sorted((lab, t.cell(i, 0).n, t.cell(i, 0).n_failed + t.cell(i, 0).n_diverged,
                       t.cell(i, 0).n_pending, t.cell(i, 0).n_planned)
                      for i, (_, lab) in enumerate(t.rows))

    want = [("m=1", 3, 1, 1, 5), ("m=4", 4, 0, 0, 4)]
    assert sweep_counts(_quiet_load(root)) == want
    assert sweep_counts(_quiet_load(root / "a")) == want
    st = sweep_status(str(root / "a"))
    assert (st.count("completed"), st.count("failed"), st.count("pending")) == (7, 1, 1)
    s_sweep = summary(_quiet_load(root / "a"))
    assert (s_sweep["completed"], s_sweep["failed"], s_sweep["pending"]) == (7, 1, 1)
    assert run_tables(_args(root)) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("trials: 7 completed, 1 failed") and "2 pending" in line


# --------------------------------------------------------------------------- tables
def _certified(dataset, model, m, seed, acc):
    r = make_record(80.0, seed=seed, m=m, dataset=dataset, model=model, ops=["gaussian"],
                    certified=acc)
    return r


def test_regression_tables_out_keeps_both_table8s(tmp_path, capsys):
    """`maxup tables --out DIR` with certifications on two datasets wrote both Table 8s to
    table8.<ext>: one was lost. Every file name carries its dataset."""
    cif = [_certified("cifar10", "resnet110", m, 0, [70.0 + m] * 12) for m in (1, 4)]
    dig = [_certified("digits", "small_cnn", m, 0, [90.0 + m] * 12) for m in (1, 4)]
    root = tmp_path / "st"
    _store(root, "c", cif, paper_table="8")
    _store(root, "d", dig, paper_table="8")
    assert run_tables(_args(root, out=tmp_path / "out", table=8)) == 0
    out = capsys.readouterr().out
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["table8_cifar10.md", "table8_digits.md"]
    assert "94.0 (n = 1)" in (tmp_path / "out" / "table8_digits.md").read_text()
    assert "74.0 (n = 1)" in (tmp_path / "out" / "table8_cifar10.md").read_text()
    assert out.count("**Table 8") == 2  # --table 8 prints every dataset's
    assert run_tables(_args(root, out=tmp_path / "all")) == 0
    names = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert len(names) == len(set(names)) == 4
    assert {"sweep_c_cifar10.md", "sweep_d_digits.md"} <= set(names)


def test_regression_paper_tables_never_mix_datasets(tmp_path):
    """Digits records marked paper_table "3" landed in "Table 3 … on CIFAR-10", took the CIFAR
    cell's published comparison away and a digits row was bolded as the column best."""
    cifar = [make_record(None, seed=s, paper_table="3", test_acc=94.8 + 0.05 * s, epochs=200)
             for s in range(5)]
    digits = [make_record(None, seed=s, paper_table="3", dataset="digits",
                          test_acc=99.0 + 0.1 * s, epochs=200) for s in range(5)]
    root = tmp_path / "st"
    _store(root, "t3", cifar + digits, paper_table="3")
    df = _quiet_load(root)
    t3 = [t for t in tables_for(df) if t.id == "3"]
    assert [t.dataset for t in t3] == ["cifar10", "digits"]
    paper, other = t3
    cell = paper.cell(0, 0)
    x = np.array([94.8 + 0.05 * s for s in range(5)])
    assert cell.n == 5 and cell.mean == pytest.approx(x.mean())
    assert cell.published is not None and cell.published.value == 94.84 and not cell.arms
    # the CIFAR cell is the column's only one: no digits row competes, and a lone cell has
    # nothing to beat, so nothing is bold (bold needs a significant difference)
    assert paper.best(0) == set() and "**94" not in render(paper, "md")
    assert "99." not in render(paper, "md")
    assert not other.paper and "digits, not the paper's cifar10" in other.title
    assert "| not comparable |" not in render(other, "md", vs_paper=True)
    assert other.cell(0, 0).mean == pytest.approx(np.mean([99.0 + 0.1 * s for s in range(5)]))


def test_regression_arm_with_no_finished_record_keeps_its_row(tmp_path):
    """An arm with no finished record disappeared from its sweep table (only the summary said
    "2 planned trials not run yet"); a completed but uncertified model lowered Table 8's n
    with no note."""
    root = tmp_path / "st"
    base = [_digits(90.0 + s, s, 1) for s in range(2)]
    planned = []
    for s in range(2):  # m = 4: planned by the sweep (with its config), never run
        cfg = copy.deepcopy(base[0]["config"])
        cfg["maxup"]["m"], cfg["seed"] = 4, s
        planned.append(store.ManifestEntry(identity.trial_id(cfg), identity.arm_id(cfg),
                                           {"maxup.m": 4, "seed": s}, config=cfg).to_dict())
    _store(root, "sw", base, extra=planned)
    df = _quiet_load(root / "sw")
    t = sweep_table(df, "sw")
    assert [lab for _, lab in t.rows] == ["m=1", "m=4"]
    assert (t.cell(1, 0).n, t.cell(1, 0).n_pending, t.cell(1, 0).n_planned) == (0, 2, 2)
    assert "| m=4 | — (n = 0; 2 not run) |" in render(t, "md")

    cert = [_certified("digits", "small_cnn", 1, s, [95.0 - s] * 12) for s in range(3)]
    for r in cert:
        r["config"]["certify"]["enabled"] = True
    cert[2]["certification"] = None  # trained, not certified yet
    _store(tmp_path / "c", "cert", cert, paper_table="8")
    (t8,) = [x for x in tables_for(_quiet_load(tmp_path / "c")) if x.id == "8"]
    assert t8.cell(0, 0).n == 2
    assert any("1 trained model not certified yet (not in n)" in n for n in t8.notes)


def test_regression_best_and_final_share_their_seeds_and_best_is_never_bolded(tmp_path):
    """In one cell "best" and "final" disagreed on n (a NaN final still counted its best
    epoch), and "best" — each seed's best epoch by test accuracy — was bolded like "final"."""
    root = tmp_path / "st"
    recs = [_digits(90.0 + s, s, 1, best_acc=95.0 + s) for s in range(3)]
    recs += [_digits(92.0 + s, s, 4, best_acc=96.0 + s) for s in range(3)]
    recs[0]["final"]["test_acc"] = None  # no final value (diverged); its best is 95.0
    _store(root, "sw", recs)
    t = sweep_table(_quiet_load(root), "sw")
    final, best = t.cell(0, 0), t.cell(0, 1)
    assert (final.n, best.n) == (2, 2) and final.n_diverged == best.n_diverged == 1
    assert best.mean == pytest.approx(np.mean([96.0, 97.0]))
    assert t.columns[1].label == "best test_acc, optimistic (%)" and not t.columns[1].rank
    md = render(t, "md")
    assert md.count("**") == 2 * 1 + 2  # the final column's best cell and the caption
    assert f"**{np.mean([92.0, 93.0, 94.0]):.2f}" in md


def test_regression_certification_sweep_prints_its_accuracy_table(tmp_path, capsys):
    """`maxup tables reproduction/certify_digits` printed only Table 8, so its one significant
    accuracy result was not shown."""
    root = tmp_path / "st"
    recs = [_certified("digits", "small_cnn", m, s, [90.0] * 12) for m in (1, 4)
            for s in range(3)]
    acc = [90.0 + i + 0.1 * i * i for i in range(6)]  # m = 1: seeds 0-2; m = 4: seeds 0-2
    for r, a in zip(recs, acc):
        r["final"]["test_acc"] = r["history"][-1]["test_acc"] = a
    _store(root, "cd", recs, paper_table="8")
    assert run_tables(_args(root / "cd")) == 0
    out = capsys.readouterr().out
    assert "**Table 8" in out and "**Sweep cd: test_acc per arm**" in out
    p = stats.ttest_rel(acc[3:], acc[:3]).pvalue  # the same seeds: paired
    assert f"| {p:.3g} (paired, n = 3) |" in out


def test_regression_csv_is_one_tidy_frame(tmp_path, capsys):
    """CSV on stdout was no one table: a summary line first, headers repeated, no sweep or
    dataset column. It is one frame pandas reads in one call."""
    root = tmp_path / "st"
    _store(root, "a", [_digits(90.0 + s, s, m) for m in (1, 4) for s in range(3)])
    _store(root, "b", [_certified("digits", "small_cnn", 1, s, [90.0] * 12) for s in range(2)],
           paper_table="8")
    assert run_tables(_args(root, format="csv")) == 0
    captured = capsys.readouterr()
    df = pd.read_csv(io.StringIO(captured.out))
    assert captured.err.startswith("trials: ")
    assert {"table", "sweep", "dataset", "row", "column", "statistic", "n", "notes"} <= \
        set(df.columns)
    assert set(df["table"].astype(str)) == {"8", "sweep"}
    assert set(df.loc[df["table"] == "sweep", "sweep"]) == {"a", "b"}
    assert set(df["dataset"]) == {"digits"}
    a4 = df[(df["sweep"] == "a") & (df["row"] == "m=4") & (df["statistic"] == "stat")
            & df["column"].str.startswith("final")]
    assert float(a4["mean"].iloc[0]) == pytest.approx(np.mean([90.0, 91.0, 92.0]))


def test_regression_latex_notes_reach_the_pdf(tmp_path):
    """Every LaTeX note (which arm is which, Δ/p, †) was a % comment, never in the PDF."""
    root = tmp_path / "st"
    _store(root, "a", [_digits(90.0 + s, s, m) for m in (1, 4) for s in range(3)])
    tex = render(sweep_table(_quiet_load(root), "a"), "latex")
    body = tex[tex.index(r"\end{tabular}"):tex.index(r"\end{table}")]
    assert not any(line.startswith("%") for line in tex.splitlines())
    assert "Welch" in body and "fewer than 5 finished seeds" in body


def test_regression_report_says_no_test_possible_and_names_diverged_seeds(tmp_path):
    """`maxup report` said "m = 8 does not beat … (no significant difference) … p = –, n = 1
    vs 5" where no test was possible, and "beats … n = 4 vs 5" without saying a seed
    diverged."""
    base = [90.0, 90.4, 90.9, 91.1, 91.6]
    recs = [_digits(v, s, 1) for s, v in enumerate(base)]
    recs += [_digits(95.0, 0, 8)]
    mx = [93.0, 93.4, 93.1, 93.9]
    recs += [_digits(v, s, 4) for s, v in enumerate(mx)]
    nan = _digits(93.0, 4, 4)
    nan["final"]["test_acc"] = None  # completed without a finite final value: diverged
    recs.append(nan)
    root = tmp_path / "st"
    _store(root, "sw", recs)
    lines = verdicts(_quiet_load(root), "final.test_acc", lower_is_better=False)
    m8 = next(x for x in lines if x.startswith("- m = 8"))
    assert "no test possible" in m8 and "n = 1 vs 5" in m8 and "does not beat" not in m8
    m4 = next(x for x in lines if x.startswith("- m = 4"))
    # Seed 4 diverged in the m = 4 arm: seeds 0-3 are paired, seed 4 of the baseline is not.
    p = stats.ttest_rel(mx, base[:4]).pvalue
    assert (f"paired t-test p = {p:.2g} over 4 common seeds" in m4
            or f"paired t-test p = {p:.3f} over 4 common seeds" in m4)
    assert f"Δ = {np.mean(np.subtract(mx, base[:4])):+.2f}" in m4
    assert "beats its m = 1 baseline" in m4 and "n = 4 vs 5; this arm: 1 diverged" in m4


def test_regression_lm_record_stores_its_best_validation_epoch_when_written(tmp_path):
    """LM records stored the epoch-1 values as best; the loader corrected them on reading, but
    whoever read record.json got the wrong ones. The written JSON holds the right epoch."""
    history = [{"epoch": 1, "epoch_val_ppl": 500.0, "val_ppl": 500.0, "test_ppl": 480.0},
               {"epoch": 2, "epoch_val_ppl": 400.0, "val_ppl": 400.0, "test_ppl": 380.0},
               {"epoch": 3, "epoch_val_ppl": 420.0, "val_ppl": 400.0, "test_ppl": 381.0}]
    cfg = {"seed": 0, "data": {"name": "kjv"}}
    rec = records.build_record(config=cfg, history=history, status="completed", timings={},
                               env={})
    records.write_record(tmp_path / "record.json", rec)
    on_disk = json.loads((tmp_path / "record.json").read_text())
    assert on_disk["best"]["epoch"] == 2 and on_disk["best"]["test_ppl"] == 380.0


# --------------------------------------------------------------------------- contract
def test_manifest_round_trip_and_one_line_refusals():
    m = store.SweepManifest(name="s", trials=[store.ManifestEntry("a" * 12, "b" * 12,
                                                                  {"seed": 0})],
                            paper_table="3", axes=["seed"])
    assert store.SweepManifest.parse(m.to_dict()) == m
    assert store.SweepManifest.parse(json.dumps(m.to_dict())) == m
    for doc, field in (({**m.to_dict(), "schema": "maxup.sweep/2"}, "schema"),
                       ({**m.to_dict(), "trials": {}}, "trials"),
                       ({**m.to_dict(), "trials": [{"arm_id": "x"}]}, "trials[0].trial_id"),
                       ({**m.to_dict(), "name": ""}, "name")):
        with pytest.raises(store.ManifestError) as exc:
            store.SweepManifest.parse(doc)
        msg = str(exc.value)
        assert f"{field}: got" in msg and "allowed:" in msg and "\n" not in msg


def test_a_corrupt_manifest_is_named_by_tables_and_status(tmp_path, capsys):
    root = tmp_path / "st"
    _store(root, "ok", [_digits(90.0, 0)])
    (root / "bad").mkdir()
    (root / "bad" / "sweep.json").write_text('{"schema": "maxup.sweep/1", "name": "bad"}')
    df = _quiet_load(root)
    assert (root / "bad" / "sweep.json").as_posix() in _named(df)
    from maxup.cli import main

    assert main(["status", str(root / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert "trials: got None" in err and "\n" not in err


def test_file_names_and_manifest_format_live_in_store_only():
    """The layout is spelled once: no other module of the package names a trial's files or
    the manifest's schema."""
    pattern = re.compile(r"""["'](record\.json|sweep\.json|last\.pt|log\.txt|maxup\.sweep/)""")
    allowed = {"maxup/store.py"}
    pending: set[str] = set()
    found = set()
    for path in (ROOT / "maxup").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel in allowed:
            continue
        code = "\n".join(line for line in path.read_text().splitlines()
                         if not line.lstrip().startswith(("#", "help=")))
        if pattern.search(code):
            found.add(rel)
    assert found <= pending, sorted(found - pending)


def _imports(path: Path, package: str) -> set[str]:
    """Modules of the maxup package a file imports, at any depth (function bodies too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("maxup"):
                out.add(node.module)
                out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("maxup")}
    return out


def test_no_import_circle_under_platform_or_analysis():
    """platform/plan and platform/sweep imported each other; no package module under
    maxup/platform or maxup/analysis is now part of an import circle (imports inside
    functions count)."""
    modules = {}
    for sub in ("platform", "analysis"):
        for path in (ROOT / "maxup" / sub).glob("*.py"):
            name = f"maxup.{sub}.{path.stem}".removesuffix(".__init__")
            modules[name] = path
    graph = {m: {d for d in _imports(p, "maxup") if d in modules and d != m}
             for m, p in modules.items()}

    def reaches(start, goal, seen):
        for nxt in graph[start]:
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                if reaches(nxt, goal, seen):
                    return True
        return False

    circles = sorted(m for m in graph if reaches(m, m, set()))
    assert circles == [], circles


def test_store_imports_neither_torch_nor_ray():
    code = ("import sys, maxup.store, maxup.platform.status; "
            "print(any(m in sys.modules for m in ('torch', 'ray')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_regression_a_sweep_reads_each_record_once(tmp_path, monkeypatch):
    """One local sweep read each record about five times (the CLI's preflight, statuses,
    estimates, certification, the end). Run again over a storage that holds every trial, it
    reads each record once: the preflight, the plan, the estimates and the certification
    phase share one reading."""
    from maxup.cli import main
    from maxup.platform.space import load_space
    from maxup.platform.sweep import sweep_layout

    space = tmp_path / "once.yaml"
    space.write_text("name: once\nbase:\n  model: {name: small_cnn}\n  data: {name: digits}\n"
                     "  train: {epochs: 2, device: cpu}\ngrid:\n  maxup.m: [1, 4]\nseeds: 2\n")
    spec = load_space(space)
    storage = tmp_path / "st"
    layout = sweep_layout(storage, spec.name)
    history = [{"epoch": e, "test_acc": 50.0 + e, "test_loss": 1.0, "wall_s": 1.0}
               for e in (1, 2)]
    for t in spec.expand():
        records.write_record(layout.record(t.trial_id), records.build_record(
            config=t.config, history=history, status="completed", timings={}, env={}))
    reads: dict[str, int] = {}
    real_read, real_load = store.Storage.read, records.load_record

    def counting_read(self, rel):
        if rel.endswith(store.RECORD):
            reads[rel.split("/")[-2]] = reads.get(rel.split("/")[-2], 0) + 1
        return real_read(self, rel)

    def counting_load(path):
        reads[Path(path).parent.name] = reads.get(Path(path).parent.name, 0) + 1
        return real_load(path)

    monkeypatch.setattr(store.Storage, "read", counting_read)
    monkeypatch.setattr(records, "load_record", counting_load)
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", str(space), "--storage", str(storage), "--no-table"]) == 0
    assert reads == {t.trial_id: 1 for t in spec.expand()}


def test_a_trial_its_sweep_no_longer_plans_is_not_in_that_sweeps_table(tmp_path):
    """A record under trials/ that names sweep "a" but that a's manifest no longer lists (the
    sweep was re-planned with fewer seeds) stays out of a's table from the root too, so the
    table reads the same from either level; it is shown among the unplanned trials."""
    root = tmp_path / "st"
    recs = [_digits(90.0 + s, s) for s in range(3)]
    _store(root, "a", recs)
    old = _digits(50.0, 7)
    tid = identity.trial_id(old["config"])
    (root / "trials" / tid).mkdir()
    (root / "trials" / tid / "record.json").write_text(json.dumps(dict(old, trial_id=tid,
                                                                       sweep="a")))
    from_root, from_sweep = _quiet_load(root), _quiet_load(root / "a")
    cells = [sweep_table(df, "a").cell(0, 0) for df in (from_root, from_sweep)]
    assert [(c.n, c.mean) for c in cells] == [(3, pytest.approx(91.0))] * 2
    assert from_root.loc[from_root["trial_id"] == tid, "sweep"].isna().all()
