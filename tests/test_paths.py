"""Relative local paths in run configs, resolved on the driver (maxup/paths.py)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sweep_helpers import sweep_records

from maxup import identity
from maxup.config import RunConfig, from_dict, to_dict
from maxup.paths import PATH_KEYS, resolve_path, resolve_paths
from maxup.platform.plan import apply_overrides
from maxup.platform.space import load_space

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the resolver

def test_relative_path_resolves_against_the_given_dir(tmp_path):
    assert resolve_path("data/fmnist", tmp_path) == str(tmp_path / "data" / "fmnist")
    assert resolve_path("./w.pt", tmp_path) == str(tmp_path / "w.pt")
    assert resolve_path("../w.pt", tmp_path / "a") == str(tmp_path / "a" / ".." / "w.pt")


@pytest.mark.parametrize("value", ["/data/fmnist", "/data//x/", "s3://bucket/fmnist",
                                   "gs://b/w.pt", "file:///data/x", "hdfs://nn/x", None, "",
                                   7])
def test_absolute_uri_none_untouched(value, tmp_path):
    assert resolve_path(value, tmp_path) == value


def test_tilde_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_path("~/data/x", "/elsewhere") == str(tmp_path / "home" / "data" / "x")


def test_resolve_paths_copies_and_touches_only_path_keys(tmp_path):
    config = {"model": {"name": "mlp", "weights": "w.pt"}, "data": {"name": "d", "root": None},
              "train": {"device": "cpu"}}
    before = json.loads(json.dumps(config))
    out = resolve_paths(config, tmp_path)
    assert config == before  # input untouched
    assert out == {"model": {"name": "mlp", "weights": str(tmp_path / "w.pt")},
                   "data": {"name": "d", "root": None}, "train": {"device": "cpu"}}
    assert resolve_paths({"seed": 1}, tmp_path) == {"seed": 1}  # absent sections stay absent


def test_path_keys_are_string_fields_of_the_run_config():
    defaults = to_dict(RunConfig())
    for key in PATH_KEYS:
        section, leaf = key.split(".")
        assert leaf in defaults[section], key
        assert getattr(getattr(from_dict({section: {leaf: "x/y"}}), section), leaf) == "x/y"


# --------------------------------------------------------------------------- trial ids

def _space(path: Path, base: str, grid: str = "maxup.m: [1]") -> Path:
    """A one-trial space: ``base`` (a run config in YAML) and one grid axis."""
    path.write_text("name: paths\nseeds: 1\nbase:\n" + textwrap.indent(base, "  ")
                    + f"grid:\n  {grid}\n")
    return path


RUN = """\
model: {name: mlp}
data: {name: fashion_mnist, root: data/fmnist}
train: {epochs: 1, device: cpu}
"""


def test_relative_data_root_keeps_the_trial_id(tmp_path):
    """A relative data.root becomes absolute; the id is the one of the absolute spelling and
    the one computed from the config as written (data.root is not in the identity)."""
    spec = load_space(_space(tmp_path / "rel.yaml", RUN))
    spec.base_dir = str(tmp_path)
    (trial,) = spec.expand()
    assert trial.config["data"]["root"] == str(tmp_path / "data" / "fmnist")
    written = {"seed": 0, "model": {"name": "mlp"},
               "data": {"name": "fashion_mnist", "root": "data/fmnist"},
               "maxup": {"m": 1}, "train": {"epochs": 1, "device": "cpu"}}
    assert trial.trial_id == identity.trial_id(to_dict(from_dict(written)))
    absolute = load_space(_space(tmp_path / "abs.yaml",
                                 RUN.replace("data/fmnist", str(tmp_path / "data/fmnist"))))
    assert absolute.expand()[0].trial_id == trial.trial_id
    # An override (--data.root=...) is resolved the same way, against the same directory.
    apply_overrides(spec, {"data.root": "other"})
    (again,) = spec.expand()
    assert again.config["data"]["root"] == str(tmp_path / "other")
    assert again.trial_id == trial.trial_id


def test_relative_weights_are_identified_by_the_file_they_name(tmp_path, monkeypatch):
    """model.weights is in the identity: a relative weights path (resolved against the working
    directory by default) has the id of the absolute path of the same file."""
    monkeypatch.chdir(tmp_path)
    rel = load_space(_space(tmp_path / "rel.yaml", RUN, "model.weights: [w/a.pt]"))
    (trial,) = rel.expand()
    assert trial.config["model"]["weights"] == str(tmp_path / "w" / "a.pt")
    absolute = load_space(_space(tmp_path / "abs.yaml", RUN,
                                 f"model.weights: [{tmp_path / 'w' / 'a.pt'}]"))
    assert absolute.expand()[0].trial_id == trial.trial_id


# --------------------------------------------------------------------------- maxup train

def _idx(arr: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_fashion(root: Path, n_train: int = 32, n_test: int = 16) -> Path:
    """The four Fashion-MNIST IDX files, tiny and random, in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, arr, magic in (
                ("images-idx3", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 2051),
                ("labels-idx1", rng.integers(0, 10, n, dtype=np.uint8), 2049)):
            with gzip.open(root / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(_idx(arr, magic))
    return root


def test_train_stores_the_absolute_data_root(tmp_path, monkeypatch):
    from maxup.cli import main

    write_fashion(tmp_path / "fmnist")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text(RUN.replace("data/fmnist", "fmnist"))
    rc = main(["train", "run.yaml", "--out", "out", "--train.batch_size=16",
               "--train.progress=false"])
    assert rc == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["data"]["root"] == str(tmp_path / "fmnist")
    record = json.loads((tmp_path / "out" / "record.json").read_text())
    assert record["config"]["data"]["root"] == str(tmp_path / "fmnist")


def test_train_resume_keeps_a_stored_relative_weights_spelling(tmp_path, monkeypatch):
    """A run stored with a relative model.weights (part of its id) resumes under that
    spelling when it names the same file; a new run, or another file, is absolute."""
    from maxup.cli.train import _with_absolute_paths

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    cfg = from_dict({"model": {"name": "mlp", "weights": "./w.pt"}})
    absolute = str(tmp_path / "w.pt")
    assert _with_absolute_paths(cfg, out, resume=True).model.weights == absolute  # no run yet
    (out / "config.json").write_text(json.dumps({"model": {"weights": "w.pt"}}))
    assert _with_absolute_paths(cfg, out, resume=True).model.weights == "w.pt"
    assert _with_absolute_paths(cfg, out, resume=False).model.weights == absolute
    (out / "config.json").write_text(json.dumps({"model": {"weights": "other.pt"}}))
    assert _with_absolute_paths(cfg, out, resume=True).model.weights == absolute


# --------------------------------------------------------------------------- a real sweep

def _kill_session(sid: int) -> None:
    """SIGKILL whatever is left in session ``sid`` (the sweep's own, started by this test)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2:].split()[3]) == sid:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
@pytest.mark.ray
def test_sweep_with_relative_data_root_trains_from_another_directory(tmp_path):
    """A space whose data.root is relative, run from a directory other than the repository:
    the preflight and the trial (in a Ray worker, another working directory) open the same
    files, and the record holds the absolute root."""
    work = tmp_path / "work"
    write_fashion(work / "fmnist")
    space = tmp_path / "spaces" / "rel.yaml"
    space.parent.mkdir()
    space.write_text(textwrap.dedent("""\
        name: relroot
        base:
          model: {name: mlp}
          data: {name: fashion_mnist, root: fmnist}
          augment: {ops: [gaussian], sigma: 0.3}
          maxup: {m: 1, warmup_epochs: 0}
          optim: {lr: 0.05}
          train: {epochs: 1, batch_size: 16, eval_batch_size: 16, device: cpu,
                  progress: false}
        seeds: 1
        retries: 0
        resources: {cpus_per_trial: 1}
        """))
    ray_tmp = tempfile.mkdtemp(prefix="mxp", dir="/tmp")  # Unix socket paths stay short
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "maxup", "sweep", str(space), "--storage",
                          "results", "--no-table"], cwd=work, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        _kill_session(p.pid)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert p.returncode == 0, out[-3000:]
    (rec,) = sweep_records(work / "results", "relroot").values()
    assert rec["status"] == "completed"
    assert rec["config"]["data"]["root"] == str(work / "fmnist")
