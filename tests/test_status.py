"""``maxup status``: a sweep's state from its storage only (local or URI), and the live
progress line's ETA. Expected values are computed here by hand."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from maxup import identity, records
from maxup.cli import main
from maxup.platform.space import load_space
from maxup.platform.status import render, sweep_status
from maxup.platform.sweep import sweep_layout, write_manifest


def _space(tmp_path: Path) -> Path:
    path = tmp_path / "st.yaml"
    path.write_text("name: st\nbase:\n  model: {name: small_cnn}\n  data: {name: digits}\n"
                    "  train: {epochs: 4, device: cpu}\ngrid:\n  maxup.m: [1, 4]\nseeds: 2\n")
    return path


def _history(n: int, wall: float) -> list[dict]:
    return [{"epoch": e, "wall_s": wall, "test_acc": 50.0} for e in range(1, n + 1)]


def _storage_with_states(tmp_path: Path):
    """m=1: seed 0 completed (4 × 2 s), seed 1 running (1 epoch of 3 s);
    m=4: seed 0 failed (NaN), seed 1 pending."""
    spec = load_space(_space(tmp_path))
    trials = spec.expand()
    by = {(t.axes["maxup.m"], t.seed): t for t in trials}
    storage = tmp_path / "store"
    layout = sweep_layout(storage, spec.name)
    write_manifest(spec, trials, layout)
    for key, status, hist, failure in (((1, 0), "completed", _history(4, 2.0), None),
                                       ((1, 1), "running", _history(1, 3.0), None),
                                       ((4, 0), "failed", _history(1, 5.0),
                                        {"reason": "non-finite loss", "epoch": 2})):
        t = by[key]
        rec = records.build_record(config=t.config, history=hist, status=status, timings={},
                                   env={}, failure=failure, sweep=spec.name, axes=t.axes)
        records.write_record(layout.record(t.trial_id), rec)
    return storage, spec, by


def test_status_counts_heartbeat_failures_and_remaining_by_hand(tmp_path):
    storage, spec, by = _storage_with_states(tmp_path)
    st = sweep_status(str(storage / "st"))
    assert {t.trial_id: t.status for t in st.trials} == {
        by[1, 0].trial_id: "completed", by[1, 1].trial_id: "running",
        by[4, 0].trial_id: "failed", by[4, 1].trial_id: "pending"}
    states = {t.trial_id: t for t in st.trials}
    # running: 3 epochs left at its own 3 s per epoch
    assert states[by[1, 1].trial_id].remaining_s == pytest.approx(3 * 3.0)
    # the pending m=4 trial has no finished sibling: priced by the cost model (a number)
    assert states[by[4, 1].trial_id].remaining_s is not None
    lines = render(st, now=dt.datetime.now(dt.UTC))
    text = "\n".join(lines)
    assert lines[0] == ("sweep st: 4 trials in 2 arms: 1 completed, 1 running, 1 failed, "
                        "1 pending")
    assert "maxup.m=1: completed [0]; running [1]" in text
    assert "maxup.m=4: failed [0]; pending [1]" in text
    assert "epoch 1/4, last heartbeat" in text and "non-finite loss" in text
    # the same from the space file + --storage
    st2 = sweep_status(str(storage), space=str(_space(tmp_path)))
    assert [(t.trial_id, t.status) for t in st2.trials] == \
        [(t.trial_id, t.status) for t in st.trials]


def test_pending_trial_takes_its_arms_finished_mean(tmp_path):
    storage, spec, by = _storage_with_states(tmp_path)
    # finish m=1 seed 1 too (4 × 2.5 s): a rerun pending m=1 trial would cost the arm's mean
    t = by[1, 1]
    layout = sweep_layout(storage, spec.name)
    records.write_record(layout.record(t.trial_id), records.build_record(
        config=t.config, history=_history(4, 2.5), status="completed", timings={}, env={}))
    layout.record(by[1, 0].trial_id).unlink()  # seed 0 now pending
    st = sweep_status(str(storage / "st"))
    pend = next(x for x in st.trials if x.trial_id == by[1, 0].trial_id)
    assert pend.status == "pending" and pend.remaining_s == pytest.approx(4 * 2.5)


def test_status_reads_uri_storage_without_ray_and_writes_nothing(tmp_path):
    storage, _spec, _by = _storage_with_states(tmp_path)
    before = sorted(p.as_posix() for p in storage.rglob("*"))
    code = ("import sys\nfrom maxup.cli import main\n"
            f"rc = main(['status', 'file://{storage}/st'])\n"
            "print('RAY', any(m == 'ray' or m.startswith('ray.') for m in sys.modules))\n"
            "sys.exit(rc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "RAY False" in out.stdout and "1 completed, 1 running, 1 failed" in out.stdout
    assert sorted(p.as_posix() for p in storage.rglob("*")) == before


def test_status_refusals(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no sweep manifest" in err and "\n" not in err


def test_progress_eta_uses_estimates_scaled_by_finished_trials():
    from maxup.platform.progress import SweepProgress

    now = [100.0]
    layout = SimpleNamespace(record=lambda tid: Path("/nonexistent") / tid)
    lines: list[str] = []
    prog = SweepProgress(layout, lines.append, {"a": 10.0, "b": 10.0, "c": 20.0}, slots=2,
                         tty=False, clock=lambda: now[0])

    def trial(tid):
        return SimpleNamespace(config={"trial": {"id": tid, "maxup.m": 1}})

    prog.on_trial_start(0, [], trial("c"))
    prog.on_trial_start(0, [], trial("a"))
    # before anything finished: factor 1; c has 20 left, a 10; b starts at 10 → ends 20
    assert prog.eta() == pytest.approx(20.0)
    now[0] = 115.0  # a took 15 s against 10 estimated: everything ×1.5
    prog.on_trial_complete(0, [], trial("a"))
    assert prog.factor() == pytest.approx(1.5)
    # c: 30 − 15 = 15 left; b: 15 on the free slot → ETA 15
    assert prog.eta() == pytest.approx(15.0)
    assert lines[0].startswith("[done]   a (maxup.m=1): no metrics in 15 s (est. 10 s)")
    assert lines[1] == "[status] 1 done, 1 running, 0 failed, 1 pending; elapsed 15 s, ETA 15 s"


def test_arm_id_of_status_matches_identity(tmp_path):
    storage, spec, by = _storage_with_states(tmp_path)
    st = sweep_status(str(storage / "st"))
    for t in st.trials:
        cfg = next(x.config for x in by.values() if x.trial_id == t.trial_id)
        assert t.arm_id == identity.arm_id(cfg)


@pytest.mark.parametrize("final, words", [
    ({"test_acc": 91.234}, "test acc 91.23%"),
    ({"val_ppl": 208.7379, "test_ppl": 194.3803}, "val ppl 208.74, test ppl 194.38"),
    ({"test_ppl": 194.3803}, "test ppl 194.38"),
    ({"epoch": 3}, "no metrics"),
])
def test_regression_language_model_trials_finish_with_their_perplexity_not_no_metrics(
        final, words):
    from maxup.platform.progress import headline

    assert headline(SimpleNamespace(final=final)) == words
    assert headline(None) == "no metrics"


def test_regression_status_orders_arms_by_value_not_as_text(tmp_path, capsys):
    """`maxup status` listed m=1, m=10, m=4 (text order); numbers now go by value."""
    path = tmp_path / "o.yaml"
    path.write_text("name: o\nbase:\n  model: {name: mlp}\n  data: {name: digits}\n"
                    "  train: {epochs: 1, device: cpu}\ngrid:\n  maxup.m: [10, 1, 4]\n"
                    "  method: {b: {optim.lr: 0.1}, a: {optim.lr: 0.2}}\nseeds: 1\n")
    spec = load_space(path)
    write_manifest(spec, spec.expand(), sweep_layout(tmp_path / "s", spec.name))
    lines = render(sweep_status(str(tmp_path / "s" / "o")))
    arms = [ln.strip().split(":")[0] for ln in lines if ln.startswith("  maxup.m=")]
    assert arms == [f"maxup.m={m}, method={x}" for m in (1, 4, 10) for x in ("a", "b")]
