"""`maxup calibrate --pack N`: N spawned processes share the device, the packing factor they
measure is stored in the profile, and bad values are refused in one line (issue 25).

The factor's value on this shared 2-core machine says nothing (other work changes the speed
between phases); what is checked is that N distinct processes ran, and that the stored factor
is the ratio of the rates recomputed here from each process's raw step count and time.
"""

from __future__ import annotations

import json
import os

import pytest

from maxup.cli import main
from maxup.errors import ConfigError
from maxup.platform import calibrate, cost


def test_pack_runs_n_processes_and_stores_their_throughput_ratio(tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.setenv("MAXUP_PROFILES", str(tmp_path / "p"))
    seen = []
    real = calibrate.measure_packing

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(calibrate, "measure_packing", spy)
    rc = main(["calibrate", "--model", "small_cnn@digits", "--batch", "8", "--repeats", "1",
               "--device", "cpu", "--threads", "1", "--pack", "2", "--pack-seconds", "0.2"])
    out = capsys.readouterr().out
    assert rc == 0 and len(seen) == 1
    r = seen[0]
    before, after = r.alone
    # one process alone (twice), then both of the two at once; none of them is this process
    assert before.n == after.n == 1 and r.together.n == 2
    assert len(set(r.together.pids)) == 2 and os.getpid() not in r.together.pids
    assert before.pids[0] in r.together.pids
    for run in (before, after, r.together):
        assert all(k >= 1 for k in run.steps) and all(t >= 0.2 for t in run.seconds)
    # the factor from the raw counts: Σ steps/s of the two ÷ mean steps/s of one alone
    together = sum(k / t for k, t in zip(r.together.steps, r.together.seconds))
    alone = (before.steps[0] / before.seconds[0] + after.steps[0] / after.seconds[0]) / 2
    prof = cost.load_profile(tmp_path / "p" / f"{cost.device_slug(cost.cpu_name())}.json")
    entry = prof.packing[2]
    assert entry.factor == pytest.approx(together / alone, rel=1e-12)
    assert entry.models == {"small_cnn@1x8x8": pytest.approx(together / alone, rel=1e-12)}
    assert "--pack 2" in entry.source and "small_cnn@digits batch 8" in entry.source
    assert "packing factor" in out and prof.models["small_cnn@1x8x8"].batch == 8
    # the planner reads it: 2 trials sharing this device are priced with it
    f, note = cost.packing_factor(prof, 2)
    assert f == entry.factor and "--pack 2" in note


@pytest.mark.parametrize("args, needle", [
    (["--pack", "1"], "--pack: got 1; allowed: an int from 2 to 32"),
    (["--pack", "0"], "--pack: got 0"),
    (["--pack", "33"], "--pack: got 33"),
    (["--pack", "4", "--pack-seconds", "-1"], "--pack-seconds: got -1"),
    (["--pack", "4", "--pack-seconds", "nan"], "--pack-seconds: got nan"),
])
def test_bad_pack_values_are_refused_in_one_line_before_anything(tmp_path, capsys,
                                                                  monkeypatch, args, needle):
    monkeypatch.setenv("MAXUP_PROFILES", str(tmp_path / "p"))
    rc = main(["calibrate", "--model", "small_cnn@digits", "--device", "cpu", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and "\n" not in err
    assert not (tmp_path / "p").exists()


def test_a_failing_packed_process_is_one_line_and_stops_the_others():
    # the model cannot be built in the children: both report, none waits forever
    with pytest.raises(ConfigError) as exc:
        calibrate.run_packed("no_such_model", "digits", 4, "cpu", 2, 0.1, 1, [1, 2, 1])
    msg = str(exc.value)
    assert msg.startswith("--pack: got 2;") and "a process failed" in msg and "\n" not in msg
    assert "BrokenBarrierError" not in msg  # the cause, not the others' aborted wait


def test_stored_packing_keeps_other_models_and_takes_the_smallest_factor():
    prof = cost.Profile("d", "gpu", "s", False)
    prof.packing[4] = cost.Packing(1.33, "old", {"a@3x32x32": 1.33})

    def result(key, together_steps, alone_steps):
        run = calibrate.PackRun
        return calibrate.PackResult(key, 8, (run([1], [alone_steps], [1.0]),
                                             run([1], [alone_steps], [1.0])),
                                    run([1, 2], together_steps, [1.0, 1.0]))

    calibrate.store_packing(prof, 4, [result("b@3x32x32", [30, 30], 40)], "new")
    entry = prof.packing[4]
    assert entry.models == {"a@3x32x32": 1.33, "b@3x32x32": pytest.approx(1.5)}
    assert entry.factor == 1.33 and entry.source == "new"
    doc = json.loads(json.dumps(prof.to_dict()))
    assert cost.parse_profile(doc, "t").packing[4].models["b@3x32x32"] == pytest.approx(1.5)
