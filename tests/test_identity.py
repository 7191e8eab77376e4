"""Experiment identity (maxup.identity): one rule for trial, arm and certification ids."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import pytest

from maxup import identity, records
from maxup.config import load_config as _load
from maxup.config import to_dict

ROOT = Path(__file__).resolve().parents[1]


def config(**overrides) -> dict:
    return to_dict(_load(ROOT / "configs" / "digits_maxup.yaml", overrides))


def lm_config(**overrides) -> dict:
    return to_dict(_load(ROOT / "configs" / "lm_kjv.yaml", overrides))


def by_hand(cfg: dict, *, seed: bool = True) -> str:
    """The documented rule, written out independently of the module."""
    ident = copy.deepcopy(cfg)
    for section, key in [("data", "root"), ("data", "num_workers"), ("data", "download"),
                         ("train", "device"), ("train", "deterministic"), ("train", "compile"),
                         ("train", "compile_mode"), ("train", "progress"),
                         ("train", "eval_batch_size"), ("train", "checkpoint_every"),
                         ("train", "start_timeout_s")]:
        del ident[section][key]
    if ident["data"]["version"] == 1:  # added after records were stored (kjv 2 splits by chapter)
        del ident["data"]["version"]
    if "lm" in ident:  # a language-modelling run
        del ident["lm"]["checkpoint_windows"]
        # keys added after records were stored: out of the id at their old behaviour
        if ident["lm"]["mask_per_sequence"] is False:
            del ident["lm"]["mask_per_sequence"]
        if ident["lm"]["dyneval_search"] == "off":
            del ident["lm"]["dyneval_search"]
    del ident["certify"]
    if not seed:
        del ident["seed"]
    canon = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:12]


@pytest.mark.parametrize("make", [config, lm_config,
                                  lambda: lm_config(**{"lm.mask_per_sequence": True}),
                                  lambda: lm_config(**{"lm.dyneval_search": "grid"}),
                                  lambda: lm_config(**{"data.version": 1})])
def test_trial_and_arm_ids_follow_the_documented_rule(make):
    cfg = make()
    assert identity.trial_id(cfg) == by_hand(cfg) == records.trial_id(cfg)
    assert identity.arm_id(cfg) == by_hand(cfg, seed=False)


def test_regression_certify_n_keeps_the_trial_id_and_maxup_m_changes_it():
    base = config()
    assert identity.trial_id(config(**{"certify.n": 500})) == identity.trial_id(base)
    assert identity.trial_id(config(**{"certify.enabled": True})) == identity.trial_id(base)
    assert identity.trial_id(config(**{"maxup.m": base["maxup"]["m"] + 1})) != \
        identity.trial_id(base)


@pytest.mark.parametrize("key,value", [
    ("train.checkpoint_every", 7), ("train.eval_batch_size", 33), ("train.device", "cuda"),
    ("train.progress", True), ("train.start_timeout_s", 5.0), ("data.root", "/elsewhere"),
    ("data.num_workers", 3), ("certify.sigma", 0.5), ("certify.alpha", 0.01),
    ("lm.checkpoint_windows", 7)])
def test_run_local_and_certification_settings_keep_trial_and_arm(key, value):
    make = lm_config if key.startswith("lm.") else config
    base, other = make(), make(**{key: value})
    assert other != base
    assert identity.trial_id(other) == identity.trial_id(base)
    assert identity.arm_id(other) == identity.arm_id(base)
    assert identity.identity_differences(base, other) == []


@pytest.mark.parametrize("key,value", [
    ("maxup.m", 8), ("maxup.bn", "eval"), ("maxup.chunk", 1), ("augment.sigma", 0.5),
    ("optim.lr", 0.01), ("train.epochs", 2), ("train.workers", 2), ("data.subset", 100),
    ("model.name", "mlp"), ("lm.bptt", 70)])
def test_training_settings_change_trial_and_arm(key, value):
    make = lm_config if key.startswith("lm.") else config
    base, other = make(), make(**{key: value})
    assert identity.trial_id(other) != identity.trial_id(base)
    assert identity.arm_id(other) != identity.arm_id(base)
    assert identity.identity_differences(base, other) == [key]


def test_seed_changes_the_trial_not_the_arm():
    a, b = config(seed=0), config(seed=1)
    assert identity.trial_id(a) != identity.trial_id(b)
    assert identity.arm_id(a) == identity.arm_id(b)


def test_certification_id_is_trial_plus_certify_settings():
    base = config(**{"certify.enabled": True})
    assert identity.certification_id(config(**{"certify.enabled": True, "certify.n": 500})) \
        != identity.certification_id(base)
    assert identity.certification_id(config(**{"certify.enabled": True, "seed": 3})) \
        != identity.certification_id(base)
    # the same trial and settings, run elsewhere: the same certification
    assert identity.certification_id(config(**{"certify.enabled": True, "data.root": "/x"})) \
        == identity.certification_id(base)


def test_identity_does_not_touch_its_input():
    cfg = config()
    before = copy.deepcopy(cfg)
    identity.trial_id(cfg), identity.arm_id(cfg), identity.certification_id(cfg)
    assert cfg == before


def test_no_other_module_hashes_configs():
    """The rule lives in one module: no other file of the package hashes JSON of a config."""
    hashing = re.compile(r"hashlib\.|\bsha256\(|\bmd5\(")
    users = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "maxup").rglob("*.py")
                   if hashing.search(p.read_text()))
    # engine: seeds from integers; storage: a scratch folder name from a URI string;
    # corpus: the checksum of a corpus's text files.
    assert users == ["maxup/data/corpus.py", "maxup/engine/rng.py", "maxup/identity.py",
                     "maxup/platform/storage.py"]
    for path in ("maxup/data/corpus.py", "maxup/engine/rng.py", "maxup/platform/storage.py"):
        text = (ROOT / path).read_text()
        assert "json.dumps" not in "".join(
            line for line in text.splitlines() if hashing.search(line)), path


# --------------------------------------------------------------------------- shared trials

def _space(path: Path, name: str, ms: list[int], train_extra: str = "",
           certify: str = "{enabled: false}") -> Path:
    path.write_text(f"""\
name: {name}
base:
  model: {{name: mlp}}
  data: {{name: digits}}
  augment: {{ops: [gaussian], sigma: 0.3}}
  maxup: {{warmup_epochs: 0}}
  optim: {{lr: 0.05}}
  train: {{epochs: 2, batch_size: 64, device: cpu, progress: false{train_extra}}}
  certify: {certify}
seeds: 1
resources: {{cpus_per_trial: 1}}
concurrency: 2
grid:
  maxup.m: {ms}
""")
    return path


@pytest.mark.ray
@pytest.mark.slow
def test_regression_a_second_sweep_trains_only_new_trials_and_both_tables_show_shared(tmp_path):
    from sweep_helpers import run_sweep_cli

    from maxup.analysis import load_records, sweep_table

    storage = tmp_path / "results"
    first = run_sweep_cli(_space(tmp_path / "a.yaml", "a", [1, 2]), storage)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "2 trial(s) to run" in first.stdout
    # Sweep b shares the m = 2 trial; it also checkpoints less often and would certify with
    # another n, neither of which changes what is trained.
    second = run_sweep_cli(_space(tmp_path / "b.yaml", "b", [2, 4], ", checkpoint_every: 2",
                                  "{enabled: false, n: 500}"), storage)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "skipping 1 trial(s)" in second.stdout and "1 trial(s) to run" in second.stdout
    stored = sorted(p.parent.name for p in (storage / "trials").glob("*/record.json"))
    assert len(stored) == 3  # m = 1, 2, 4: the shared one stored once
    df = load_records(storage)
    assert sorted(df.groupby("sweep")["config.maxup.m"].apply(sorted).items()) == \
        [("a", [1, 2]), ("b", [2, 4])]
    assert df["trial_id"].nunique() == 3
    for name, ms in (("a", [1, 2]), ("b", [2, 4])):
        one = load_records(storage / name)  # one sweep's folder: its own trials only
        assert sorted(one["config.maxup.m"]) == ms and set(one["sweep"]) == {name}
        assert len(sweep_table(one).rows) == 2
