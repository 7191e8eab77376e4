"""Search spaces: every shipped file expands and validates, paper hyper-parameters, stable trial
ids, one-line refusals from ``maxup sweep --dry-run`` (exit 2, nothing written), no Ray import."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from maxup.cli import main
from maxup.errors import ConfigError
from maxup.platform.space import REPO_ROOT, check_space, load_space

SPACES = sorted((REPO_ROOT / "search_spaces").glob("*.yaml"))
SPACE_IDS = [p.stem for p in SPACES]
PY = sys.executable

# --------------------------------------------------------------------------- the paper's numbers
# Section 4.2 (CIFAR, Tables 3-5): 200 epochs, batch 256, lr 0.1 divided by 10 after 100 and
# 150 epochs (ResNet-110, PreAct-ResNet-110) or 60, 120, 180 (WRN-28-10); m = 10 for WRN, 4 for
# the others; no dropout; Cutout (DeVries & Taylor) 16 on CIFAR-10, 8 on CIFAR-100; Section 4:
# 5 warm-up epochs when training from scratch; five runs.
CIFAR = {"epochs": 200, "batch_size": 256, "lr": 0.1, "gamma": 0.1, "dropout": 0.0,
         "warmup_epochs": 5, "seeds": 5}
MILESTONES = {"resnet110": [100, 150], "preact_resnet110": [100, 150],
              "wrn28_10": [60, 120, 180]}
MAXUP_M = {"resnet110": 4, "preact_resnet110": 4, "wrn28_10": 10}
CUTOUT = {"cifar10": 16, "cifar100": 8}
TABLE5_M = {1, 4, 10, 20}
# Section 4.4 (Table 8): CIFAR-10 ResNet-110, batch 256, lr 0.1 ÷10 every 50 epochs, 150 epochs;
# 20 models over sigma x m; Cohen et al.'s certification settings.
CERT_TRAIN = {"epochs": 150, "batch_size": 256, "lr": 0.1, "milestones": [50, 100]}
CERT_SIGMAS = {0.12, 0.25, 0.5, 1.0}
CERTIFY = {"enabled": True, "sigma": None, "n0": 100, "n": 100_000, "alpha": 0.001,
           "skip": 20, "batch": 400}
# Section 4.1 (Table 2): ResNet-50/101 fine-tuned 20 epochs with MaxUp+CutMix, m = 4; weight
# decay from CutMix's code (1e-4).
IMAGENET = {"epochs": 20, "m": 4, "weight_decay": 1e-4, "models": {"resnet50", "resnet101"}}


def _expand(name: str):
    spec = load_space(REPO_ROOT / "search_spaces" / f"{name}.yaml")
    return spec, spec.expand()


def _method_m(trial) -> int:
    return trial.config["maxup"]["m"]


# --------------------------------------------------------------------------- every space

@pytest.mark.parametrize("path", SPACES, ids=SPACE_IDS)
def test_space_loads_expands_validates_and_counts(path):
    raw = yaml.safe_load(path.read_text())
    spec = load_space(path)
    trials = spec.expand()
    check_space(spec, trials, None, None)  # model/dataset names; no cluster limits
    sizes = [len(v) for v in (raw.get("grid") or {}).values()]
    seeds = raw.get("seeds", 1)
    n_seeds = seeds if isinstance(seeds, int) else len(seeds)
    assert len(trials) == math.prod(sizes) * n_seeds
    ids = [t.trial_id for t in trials]
    assert len(set(ids)) == len(ids)
    # run order: the first len(arms) trials cover every arm once (stratified by seed)
    arms = {tuple(sorted((k, str(v)) for k, v in t.axes.items() if k != "seed")) for t in trials}
    first = [tuple(sorted((k, str(v)) for k, v in t.axes.items() if k != "seed"))
             for t in trials[:len(arms)]]
    assert set(first) == arms and len(first) == len(arms)
    assert {t.seed for t in trials[:len(arms)]} == {spec.seeds[0]}
    assert all(t.axes["seed"] == t.seed == t.config["seed"] for t in trials)
    if path.name != "quickstart.yaml":  # each header: what, how to run, its cost, table
        head = path.read_text().split("\nname:")[0]
        assert f"maxup sweep search_spaces/{path.name}" in head
        # the cost comes from the priced dry run, not a hand-written estimate
        assert "maxup tables results/" in head and "--dry-run" in head and "Wall:" not in head


# --------------------------------------------------------------------------- paper tables

@pytest.mark.parametrize("name,table,dataset", [("table3_cifar10", "3", "cifar10"),
                                                ("table4_cifar100", "4", "cifar100")])
def test_tables_3_4_paper_hyperparameters(name, table, dataset):
    spec, trials = _expand(name)
    assert spec.paper_table == table and spec.gpus_per_trial == 1
    assert list(spec.grid) == ["arch", "method"]  # method applied after the per-arch bundle
    assert len(spec.seeds) == CIFAR["seeds"]
    seen = Counter()
    for t in trials:
        c = t.config
        model = c["model"]["name"]
        assert c["data"]["name"] == dataset and c["data"]["train_transform"] == "none"
        assert c["train"]["epochs"] == CIFAR["epochs"]
        assert c["train"]["batch_size"] == CIFAR["batch_size"]
        assert c["optim"]["lr"] == CIFAR["lr"] and c["optim"]["gamma"] == CIFAR["gamma"]
        assert c["optim"]["schedule"] == "multistep"
        assert c["optim"]["milestones"] == MILESTONES[model]
        assert c["model"]["dropout"] == CIFAR["dropout"]
        assert c["maxup"]["warmup_epochs"] == CIFAR["warmup_epochs"]
        assert c["augment"]["ops"] == ["crop_flip", "cutout"]
        assert c["augment"]["cutout_size"] == CUTOUT[dataset]
        want_m = 1 if t.axes["method"] == "cutout" else MAXUP_M[model]
        assert _method_m(t) == want_m
        seen[(model, t.axes["method"])] += 1
    assert set(seen) == {(a, m) for a in MILESTONES for m in ("cutout", "maxup_cutout")}
    assert set(seen.values()) == {CIFAR["seeds"]}


def test_table5_m_ablation_paper_hyperparameters():
    spec, trials = _expand("table5_m_ablation")
    assert spec.paper_table == "5" and spec.gpus_per_trial == 1
    cells = Counter((t.config["model"]["name"], _method_m(t)) for t in trials)
    assert set(cells) == {(a, m) for a in ("resnet110", "wrn28_10") for m in TABLE5_M}
    assert set(cells.values()) == {CIFAR["seeds"]}
    for t in trials:
        c = t.config
        assert c["data"]["name"] == "cifar100"
        assert c["augment"]["cutout_size"] == CUTOUT["cifar100"]
        assert (c["train"]["epochs"], c["train"]["batch_size"], c["optim"]["lr"]) == (
            CIFAR["epochs"], CIFAR["batch_size"], CIFAR["lr"])
        assert c["optim"]["milestones"] == MILESTONES[c["model"]["name"]]
        assert c["model"]["dropout"] == 0.0 and c["maxup"]["warmup_epochs"] == 5


def test_table8_certify_paper_hyperparameters():
    spec, trials = _expand("table8_certify")
    assert spec.paper_table == "8" and len(trials) == 20 and spec.seeds == [0]
    assert {t.config["augment"]["sigma"] for t in trials} == CERT_SIGMAS
    ms = {_method_m(t) for t in trials}
    assert 1 in ms and len(ms) == 5
    for t in trials:
        c = t.config
        assert (c["model"]["name"], c["data"]["name"]) == ("resnet110", "cifar10")
        assert c["augment"]["ops"] == ["gaussian"]
        assert c["train"]["epochs"] == CERT_TRAIN["epochs"]
        assert c["train"]["batch_size"] == CERT_TRAIN["batch_size"]
        assert c["optim"]["lr"] == CERT_TRAIN["lr"]
        assert c["optim"]["milestones"] == CERT_TRAIN["milestones"]
        assert c["optim"]["gamma"] == 0.1 and c["optim"]["schedule"] == "multistep"
        assert {k: c["certify"][k] for k in CERTIFY} == CERTIFY  # sigma None: training sigma


def test_table8_cpu_is_small_and_certifies_a_few_dozen_images():
    from maxup.data import dataset_info

    spec, trials = _expand("table8_cpu")
    assert spec.paper_table == "8" and len(trials) == 4 and spec.gpus_per_trial == 0
    assert {(t.config["augment"]["sigma"], _method_m(t)) for t in trials} == {
        (s, m) for s in (0.25, 0.5) for m in (1, 4)}
    for t in trials:
        c, cert = t.config, t.config["certify"]
        assert c["train"]["device"] == "cpu" and c["model"]["name"] == "small_cnn"
        assert cert["enabled"] and cert["sigma"] is None
        assert cert["n0"] <= 100 and cert["n"] <= 2000
        n_test = dataset_info(c["data"]["name"]).test_size
        images = min(-(-n_test // cert["skip"]), cert["max_images"] or n_test)
        assert 20 <= images <= 60


def test_table2_imagenet_paper_hyperparameters_and_weights_placeholder():
    from maxup.models import build_model

    spec, trials = _expand("table2_imagenet")
    assert spec.paper_table == "2" and spec.gpus_per_trial >= 1
    assert {(t.config["model"]["name"], _method_m(t)) for t in trials} == {
        (a, m) for a in IMAGENET["models"] for m in (1, IMAGENET["m"])}
    for t in trials:
        c = t.config
        assert c["data"]["name"] == "imagenet" and c["augment"]["ops"] == ["cutmix"]
        assert c["train"]["epochs"] == IMAGENET["epochs"]
        assert c["optim"]["weight_decay"] == IMAGENET["weight_decay"]
        assert c["maxup"]["warmup_epochs"] == 0  # fine-tuning: no warm-up
        assert c["model"]["weights"] and not Path(c["model"]["weights"]).exists()
    # The placeholder passes validation (above) but training refuses it in one line.
    model, weights = trials[0].config["model"]["name"], trials[0].config["model"]["weights"]
    with pytest.raises(ConfigError, match="model.weights") as exc:
        build_model(model, num_classes=1000, mean=(0.5,) * 3, std=(0.25,) * 3, weights=weights)
    assert "\n" not in str(exc.value) and weights in str(exc.value)


def test_fashion_ablation_settings():
    spec, trials = _expand("fashion_ablation")
    assert spec.concurrency == 2 and len(spec.seeds) == 5 and spec.paper_table is None
    assert {_method_m(t) for t in trials} == {1, 4, 10}
    for t in trials:
        c = t.config
        assert (c["model"]["name"], c["data"]["name"]) == ("small_cnn", "fashion_mnist")
        assert 2000 <= c["data"]["subset"] <= 5000
        assert c["data"]["train_transform"] == "none"
        assert c["augment"]["ops"] == ["crop_flip", "cutout"]
        assert c["augment"]["cutout_size"] == 8 and c["augment"]["crop_padding"] == 2


# --------------------------------------------------------------------------- trial ids

def test_trial_ids_stable_and_seed_sensitive():
    spec, trials = _expand("table3_cifar10")
    again = load_space(spec.source).expand()
    assert [t.trial_id for t in trials] == [t.trial_id for t in again]
    by_arm: dict = {}
    for t in trials:
        by_arm.setdefault((t.axes["arch"], t.axes["method"]), set()).add(t.trial_id)
    assert all(len(ids) == len(spec.seeds) for ids in by_arm.values())
    # same config, different seed -> different id
    a = next(t for t in trials if t.seed == 0)
    b = next(t for t in trials if t.seed == 1 and t.axes == {**a.axes, "seed": 1})
    assert {**a.config, "seed": 1} == b.config and a.trial_id != b.trial_id


def _write_space(tmp_path: Path, body: str, name: str = "bad") -> Path:
    base = (f"name: {name}\nbase:\n  model: {{name: small_cnn}}\n  data: {{name: digits}}\n"
            "  train: {epochs: 1, device: cpu}\n")
    path = tmp_path / f"{name}.yaml"
    path.write_text(base + body)
    return path


def test_dry_run_subprocess_ids_match_and_no_ray(tmp_path):
    """Across processes: the same ids; a dry run prints the plan and never imports ray."""
    storage = tmp_path / "store"
    code = (
        "import json, sys\n"
        "from maxup.cli import main\n"
        f"rc = main(['sweep', {str(REPO_ROOT / 'search_spaces/fashion_ablation.yaml')!r},"
        f" '--dry-run', '--storage', {str(storage)!r}])\n"
        "from maxup.platform.space import load_space\n"
        f"paths = {[str(p) for p in SPACES]!r}\n"
        "ids = {p: [t.trial_id for t in load_space(p).expand()] for p in paths}\n"
        "print('RESULT', json.dumps({'rc': rc, 'ray': any(m == 'ray' or m.startswith('ray.')"
        " for m in sys.modules), 'ids': ids}))\n")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert result["rc"] == 0 and result["ray"] is False
    for p in SPACES:
        assert result["ids"][str(p)] == [t.trial_id for t in load_space(p).expand()]
    assert not storage.exists()
    # the plan: one line per trial with id, varying axes and seed; resources and concurrency
    spec, trials = _expand("fashion_ablation")
    lines = out.stdout.splitlines()
    for t in trials:
        row = next(line for line in lines if t.trial_id in line)
        assert row.split()[2:] == [str(t.axes["maxup.m"]), str(t.seed)]
    assert "maxup.m" in out.stdout and "seed" in out.stdout
    assert any(line.startswith("resources: 1 CPU and 0 GPU per trial; 2 trial(s) at a time")
               for line in lines)


REFUSALS = {  # id: (YAML body, field named, bad value shown)
    "unknown_axis": ("grid:\n  maxup.mm: [1, 4]\n", "maxup.mm", "1"),
    "empty_axis": ("grid:\n  maxup.m: []\n", "grid.maxup.m", "[]"),
    "duplicate_values": ("grid:\n  maxup.m: [4, 4]\n", "grid", "'maxup.m': 4"),
    "duplicate_labels": ("grid:\n  a:\n    x: {maxup.m: 4}\n    y: {maxup.m: 4}\n", "grid",
                         "'a': 'y'"),
    "duplicate_seeds": ("seeds: [0, 0]\n", "seeds", "[0, 0]"),
    "zero_seeds": ("seeds: 0\n", "seeds", "got 0"),
    "unknown_key": ("colour: blue\n", "colour", "'blue'"),
    # more than this machine and than any node of the shipped cluster.yaml the dry run plans for
    "impossible_cpus": ("seeds: 1\nresources: {cpus_per_trial: 500}\n",
                        "resources.cpus_per_trial", "500"),
    "unknown_model": ("grid:\n  model.name: [small_cnn, resnet9000]\n", "model.name",
                      "'resnet9000'"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_dry_run_refusals_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch, case):
    import maxup.cli.sweep as sweep_cli

    body, field, value = REFUSALS[case]
    monkeypatch.setattr(sweep_cli.os, "cpu_count", lambda: 2)  # "this 2-CPU machine"
    path = _write_space(tmp_path, body)
    storage = tmp_path / "store"
    rc = main(["sweep", str(path), "--dry-run", "--storage", str(storage)])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 2 and captured.out == ""
    assert "\n" not in err and err.startswith(f"maxup: error: {field}: got ")
    assert value in err
    assert not storage.exists()


def test_refusal_exit_code_from_the_console_script(tmp_path):
    path = _write_space(tmp_path, "grid:\n  maxup.mm: [1, 4]\n")
    storage = tmp_path / "store"
    out = subprocess.run([str(Path(PY).parent / "maxup"), "sweep", str(path), "--dry-run",
                          "--storage", str(storage)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "maxup.mm" in out.stderr and not storage.exists()


def test_regression_local_gpus_counted(tmp_path, capsys, monkeypatch):
    # sweep_cli passed 0 GPUs for the embedded local Ray, so a GPU space was refused even on a
    # machine with GPUs; it now counts the CUDA devices this process sees.
    import maxup.cli.sweep as sweep_cli

    path = _write_space(tmp_path, "resources: {cpus_per_trial: 1, gpus_per_trial: 1}\n"
                        "concurrency: 4\ngrid:\n  maxup.m: [1, 4]\n", name="gpu")
    monkeypatch.setattr(sweep_cli.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(sweep_cli, "local_gpus", lambda: 2.0)
    assert main(["sweep", str(path), "--dry-run", "--storage", str(tmp_path / "s")]) == 0
    assert "2 trial(s) at a time" in capsys.readouterr().out
    monkeypatch.setattr(sweep_cli, "local_gpus", lambda: 0.0)
    # Without GPUs here, the dry run still plans (for the cluster) and says so (issue 14) ...
    assert main(["sweep", str(path), "--dry-run", "--storage", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "needs a cluster" in out and "resources.gpus_per_trial" in out
    # ... and running it here is refused before anything starts.
    assert main(["sweep", str(path), "--storage", str(tmp_path / "s")]) == 2
    assert "resources.gpus_per_trial" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_regression_empty_base_section_keeps_base_config(tmp_path):
    from maxup.platform.space import load_space

    base = tmp_path / "base.yaml"
    base.write_text("certify: {enabled: true, n: 123}\ntrain: {epochs: 2}\n")
    space = tmp_path / "s.yaml"
    space.write_text("name: s\nbase_config: base.yaml\nbase: {certify: {}}\nseeds: 1\n")
    trial = load_space(space).expand()[0]
    assert trial.config["certify"]["enabled"] is True and trial.config["certify"]["n"] == 123


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file()}


@pytest.mark.parametrize("remote", [False, True], ids=["local", "uri"])
def test_dry_run_marks_trials_already_in_the_storage_and_writes_nothing(tmp_path, capsys,
                                                                         remote):
    from maxup import records

    path = _write_space(tmp_path, "seeds: 2\ngrid:\n  maxup.m: [1, 4]\n", name="dr")
    trials = load_space(path).expand()
    storage = tmp_path / "s"
    # Another sweep finished one of these trials; a third trial is half-way.
    for t, status in ((trials[1], "completed"), (trials[2], "running")):
        records.write_record(storage / "trials" / t.trial_id / "record.json",
                             records.build_record(config=t.config, history=[], status=status,
                                                  timings={}, env={}))
    before = _tree(storage)
    target = f"file://{storage}" if remote else str(storage)
    assert main(["sweep", str(path), "--dry-run", "--storage", target]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1]: line.split()[-1] for line in out.splitlines()
            if line[:3].strip().isdigit()}
    expected = {t.trial_id: "-" for t in trials}
    expected.update({trials[1].trial_id: "completed", trials[2].trial_id: "running"})
    assert rows == expected
    assert f"stored: 1 of {len(trials)} trials already completed" in out
    assert _tree(storage) == before  # nothing written, not even the sweep's manifest
