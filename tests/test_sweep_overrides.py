"""Issue 27, item 1: a sweep's command-line overrides live in its manifest with the exact
command, and ``status``, ``report`` and a rerun use them; a rerun whose plan differs from the
manifest is refused unless ``--replan``; the space's own ``seeds``, ``concurrency``,
``retries`` and ``resources.*`` can be overridden. No Ray here: storages are written by hand
(a sweep whose trials are all complete runs no Ray either)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from maxup import identity, records, store
from maxup.cli import main
from maxup.platform.space import apply_overrides, load_space, max_concurrent
from maxup.platform.sweep import sweep_layout, write_manifest

GRID = [1, 4]  # maxup.m values of the space below


def _space(tmp_path: Path) -> Path:
    path = tmp_path / "ov.yaml"
    path.write_text("name: ov\ndescription: five epochs, three seeds\nbase:\n"
                    "  model: {name: mlp}\n  data: {name: digits}\n"
                    "  train: {epochs: 5, device: cpu}\n"
                    f"grid:\n  maxup.m: {GRID}\nseeds: 3\nconcurrency: 1\n"
                    "resources: {cpus_per_trial: 1}\n")
    return path


def _ran_with(tmp_path: Path, overrides: dict, command: str) -> tuple[Path, list]:
    """A storage as `maxup sweep SPACE --storage S <overrides>` leaves it: the manifest and a
    completed record of every planned trial."""
    spec = load_space(_space(tmp_path))
    apply_overrides(spec, overrides)
    trials = spec.expand()
    storage = tmp_path / "st"
    layout = sweep_layout(storage, spec.name)
    write_manifest(spec, trials, layout, command)
    for t in trials:
        hist = [{"epoch": e, "wall_s": 1.0, "test_acc": 50.0}
                for e in range(1, t.config["train"]["epochs"] + 1)]
        rec = records.build_record(config=t.config, history=hist, status="completed",
                                   timings={"wall_s": 1.0}, env={}, sweep=spec.name,
                                   axes=t.axes)
        records.write_record(layout.record(t.trial_id), rec)
    return storage, trials


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_manifest_round_trips_overrides_and_command_and_reads_older_manifests():
    entry = store.ManifestEntry("a" * 12, "b" * 12, {"seed": 0})
    m = store.SweepManifest(name="s", trials=[entry], overrides={"train.epochs": 2,
                                                                 "seeds": [0, 3]},
                            command="maxup sweep s.yaml --storage st --train.epochs=2")
    assert store.SweepManifest.parse(json.dumps(m.to_dict())) == m
    older = m.to_dict()
    del older["overrides"], older["command"]
    parsed = store.SweepManifest.parse(older)
    assert (parsed.overrides, parsed.command) == ({}, None)
    with pytest.raises(store.ManifestError, match="overrides: got"):
        store.SweepManifest.parse({**m.to_dict(), "overrides": [1]})
    # The arguments that give the overrides back, as the command line parses them.
    from maxup.config import parse_overrides

    args = {"train.epochs": 2, "seeds": [0, 3], "data.root": "/a b", "model.weights": None,
            "optim.nesterov": True, "augment.ops": ["crop_flip", "cutout"], "x.s": "1"}
    import shlex

    assert parse_overrides(shlex.split(store.override_args(args))) == args


def test_space_fields_override_from_the_command_line(tmp_path):
    spec = load_space(_space(tmp_path))
    apply_overrides(spec, {"seeds": 2, "concurrency": 4, "retries": 0,
                           "resources.cpus_per_trial": 0.5, "train.epochs": 1})
    trials = spec.expand()
    assert len(trials) == len(GRID) * 2 and sorted({t.seed for t in trials}) == [0, 1]
    assert {t.config["train"]["epochs"] for t in trials} == {1}
    assert (spec.concurrency, spec.retries, spec.cpus_per_trial) == (4, 0, 0.5)
    # 2 CPUs at 0.5 CPU per trial: 4 slots, the overridden concurrency allows them all.
    assert max_concurrent(spec, trials, 2.0, 0.0) == 4
    assert spec.overrides == {"seeds": 2, "concurrency": 4, "retries": 0,
                              "resources.cpus_per_trial": 0.5, "train.epochs": 1}
    spec = load_space(_space(tmp_path))
    apply_overrides(spec, {"seeds": [3, 7]})
    assert sorted({t.seed for t in spec.expand()}) == [3, 7]


@pytest.mark.parametrize("arg, field", [("--seeds=0", "seeds"), ("--seeds=[1,1]", "seeds"),
                                        ("--concurrency=0", "concurrency"),
                                        ("--retries=-1", "retries"),
                                        ("--resources.cpus_per_trial=-1",
                                         "resources.cpus_per_trial"),
                                        ("--resources.tpus=1", "resources.tpus"),
                                        ("--resources={cpus_per_trial: 2}", "--resources"),
                                        ("--maxup.m=2", "maxup.m")])
def test_bad_space_override_is_one_line_and_writes_nothing(tmp_path, capsys, arg, field):
    storage = tmp_path / "st"
    assert main(["sweep", str(_space(tmp_path)), "--storage", str(storage), "--dry-run",
                 arg]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"maxup: error: {field}: got")
    assert not storage.exists()


def test_sweep_overrides_forgotten_by_status_rerun_and_report(tmp_path, capsys):
    """The regression of issue 27, item 1: a sweep run with overrides was reported 0 of N
    completed by `status SPACE`, a rerun without them planned new trials and overwrote the
    manifest, and the report printed a command without them."""
    space = _space(tmp_path)
    ran = {"train.epochs": 2, "seeds": 1}
    command = f"maxup sweep {space} --storage {tmp_path / 'st'} --train.epochs=2 --seeds=1"
    storage, trials = _ran_with(tmp_path, ran, command)
    n = len(GRID) * 1
    assert len(trials) == n

    assert main(["status", str(space), "--storage", str(storage)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (f"sweep ov: {n} trials in {n} arms: {n} completed, "
                                   "0 running, 0 failed, 0 pending")
    assert "overrides: --train.epochs=2 --seeds=1" in out

    manifest = json.loads((storage / "ov" / "sweep.json").read_text())
    assert manifest["overrides"] == ran and manifest["command"] == command
    # A rerun without overrides uses the manifest's: nothing new planned, nothing trained.
    assert main(["sweep", str(space), "--storage", str(storage), "--no-table"]) == 0
    out = capsys.readouterr().out
    assert "overrides from the manifest" in out and "--train.epochs=2 --seeds=1" in out
    assert f"skipped (already done) {n}" in out
    after = json.loads((storage / "ov" / "sweep.json").read_text())
    assert {e["trial_id"] for e in after["trials"]} == {t.trial_id for t in trials}
    assert after["overrides"] == ran

    # Other overrides: another plan, refused in one line; nothing written.
    before = _tree(storage)
    assert main(["sweep", str(space), "--storage", str(storage), "--train.epochs=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--replan" in err and command in err
    assert f"got a plan of {len(GRID) * 3} trials, {len(GRID) * 3} of them not in the " \
           f"manifest" in err
    assert _tree(storage) == before

    # The report states the overrides and the command with them.
    from maxup.analysis.report import build_report

    text = build_report(storage)
    assert command in text and "`--train.epochs=2 --seeds=1`" in text
    assert "tests/test_reproduction.py" not in text  # not the shipped records


def test_replan_replaces_the_manifest_and_keeps_the_records(tmp_path, capsys):
    space = _space(tmp_path)
    storage, trials = _ran_with(tmp_path, {"train.epochs": 2, "seeds": 1}, "old command")
    kept = _tree(storage / "trials")
    # A dry run of another plan says it differs, and writes nothing.
    assert main(["sweep", str(space), "--storage", str(storage), "--dry-run",
                 "--train.epochs=2", "--seeds=2"]) == 0
    out = capsys.readouterr().out
    assert "a real run is refused unless --replan" in out
    assert (f"command: maxup sweep {space} --storage {storage} --train.epochs=2 --seeds=2"
            in out)
    # --replan: the manifest now lists the new plan; the old records stay as they were.
    spec = load_space(space)
    apply_overrides(spec, {"train.epochs": 2, "seeds": 2})
    want = {t.trial_id for t in spec.expand()}
    assert {t.trial_id for t in trials} < want  # seeds 0..1 include seed 0
    # Pretend the new trials are done too, so the rerun needs no Ray.
    layout = sweep_layout(storage, "ov")
    for t in spec.expand():
        if not layout.record(t.trial_id).exists():
            rec = records.build_record(config=t.config, history=[{"epoch": 1, "wall_s": 1.0}],
                                       status="completed", timings={}, env={}, sweep="ov",
                                       axes=t.axes)
            records.write_record(layout.record(t.trial_id), rec)
    assert main(["sweep", str(space), "--storage", str(storage), "--no-table",
                 "--train.epochs=2", "--seeds=2"]) == 2  # refused without --replan
    capsys.readouterr()
    assert main(["sweep", str(space), "--storage", str(storage), "--no-table", "--replan",
                 "--train.epochs=2", "--seeds=2"]) == 0
    m = store.Storage(storage).read_manifest("ov")
    assert {e.trial_id for e in m.trials} == want
    assert m.overrides == {"train.epochs": 2, "seeds": 2}
    assert m.command == f"maxup sweep {space} --storage {storage} --train.epochs=2 --seeds=2"
    assert all(_tree(storage / "trials")[k] == v for k, v in kept.items())
    assert all(identity.trial_id(e.config) == e.trial_id for e in m.trials)


def test_regression_gpu_space_on_a_cpu_machine_says_what_to_do(tmp_path, capsys, monkeypatch):
    """Issue 27, item 4: `maxup sweep search_spaces/table3_cifar10.yaml` on a 2-CPU machine
    without a GPU said `resources.cpus_per_trial: got 4.0; allowed: at most the cluster's 2
    CPUs`, and the override it needed was refused as an unknown key. Now one line says the
    space wants GPUs and names the ways on; the overrides it names are accepted."""
    import maxup.cli.sweep as sweep_cli

    monkeypatch.setattr(sweep_cli, "local_gpus", lambda: 0.0)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    space = str(Path(__file__).resolve().parents[1] / "search_spaces" / "table3_cifar10.yaml")
    storage = tmp_path / "st"
    assert main(["sweep", space, "--storage", str(storage)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("maxup: error: resources.gpus_per_trial: got 1; search space "
                          "table3_cifar10 wants GPUs (4 CPU and 1 GPU per trial) and this "
                          "machine has 2 CPU and 0 GPU; allowed:")
    for way in ("--address auto", "--dry-run", "--resources.cpus_per_trial=2 "
                "--resources.gpus_per_trial=0"):
        assert way in err
    assert not storage.exists()
    # The overrides it names fit this machine: one trial at a time, on its 2 CPUs.
    from maxup.platform.space import refuse_here

    spec = load_space(space)
    apply_overrides(spec, {"resources.cpus_per_trial": 2, "resources.gpus_per_trial": 0})
    trials = spec.expand()
    refuse_here(spec, trials, 2.0, 0.0)
    assert max_concurrent(spec, trials, 2.0, 0.0) == 1


@pytest.mark.parametrize("space_name, gpus", [("table3_cifar10.yaml", 0.0),
                                              ("quickstart.yaml", 0.0)])
def test_regression_dry_run_and_status_print_one_cost_figure(tmp_path, capsys, monkeypatch,
                                                             space_name, gpus):
    """Issue 27, item 7: `table3_cifar10` cost 545 GPU-hours in the dry run (A10G from
    cluster.yaml) and 190.9 h in `maxup status` (the A100 default). Both now price through one
    function and print the same cost line, with finished trials taken off alike."""
    import maxup.cli.sweep as sweep_cli
    from maxup.platform import cost

    monkeypatch.setattr(sweep_cli, "local_gpus", lambda: gpus)
    monkeypatch.setattr(cost, "local_gpu_count", lambda: gpus)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    root = Path(__file__).resolve().parents[1]
    space = str(root / "search_spaces" / space_name)
    storage = tmp_path / "st"
    spec = load_space(space)
    trials = spec.expand()
    layout = sweep_layout(storage, spec.name)
    write_manifest(spec, trials, layout)
    done = trials[0]  # one finished trial: it costs nothing in either
    hist = [{"epoch": e, "wall_s": 1.0, "test_acc": 50.0}
            for e in range(1, done.config["train"]["epochs"] + 1)]
    records.write_record(layout.record(done.trial_id), records.build_record(
        config=done.config, history=hist, status="completed", timings={"wall_s": 1.0},
        env={}, sweep=spec.name, axes=done.axes))

    def cost_of(argv: list[str]) -> str:
        main(argv)
        lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("cost: ")]
        assert len(lines) == 1, lines
        return lines[0].removesuffix(" (as `maxup sweep --dry-run` prices it)")

    # quickstart is planned here (digits is bundled); table3 for cluster.yaml (the CIFAR
    # files missing here are only reported)
    dry = cost_of(["sweep", space, "--storage", str(storage), "--dry-run"])
    status = cost_of(["status", space, "--storage", str(storage)])
    assert status == dry
    assert f"cost: {len(trials) - 1} trial(s) to train" in dry
    assert status == cost_of(["status", str(storage / spec.name)])
