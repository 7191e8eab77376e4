"""Certification of a sweep's models as sharded Ray tasks (maxup/platform/certification.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sweep_helpers import run_sweep_cli, sweep_records, trial_dir

from maxup.platform.certification import certified_image_count, shard_bounds

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("num_images,skip,shards", [(30, 18, 2), (7, 3, 3), (5, 20, 8),
                                                     (1, 1, 4), (100, 1, 7)])
def test_shards_cover_exactly_the_certified_images(num_images, skip, shards):
    bounds = shard_bounds(num_images, skip, shards)
    covered = [i for start, stop in bounds for i in range(start, stop, skip)]
    assert covered == [k * skip for k in range(num_images)]  # same images, once, in order
    assert len(bounds) == min(shards, num_images)
    assert all(start % skip == 0 for start, _ in bounds)


def test_certified_image_count():
    assert certified_image_count(540, {"skip": 18, "max_images": None}) == 30
    assert certified_image_count(541, {"skip": 18, "max_images": None}) == 31
    assert certified_image_count(540, {"skip": 1, "max_images": 30}) == 30


@pytest.mark.ray
@pytest.mark.slow
def test_cpu_table8_sweep_certifies_in_shards_and_fills_table8(tmp_path):
    """Train two tiny digits models, certify them as Ray shard tasks, print Table 8."""
    space = yaml.safe_load((ROOT / "search_spaces" / "table8_cpu.yaml").read_text())
    space["name"] = "t8"
    space["base_config"] = str(ROOT / "configs" / "digits_maxup.yaml")
    space["base"]["train"]["epochs"] = 2
    space["base"]["certify"].update({"n0": 20, "n": 200, "max_images": 6, "skip": 30})
    space["grid"] = {"augment.sigma": [0.25], "maxup.m": [1, 2]}
    path = tmp_path / "t8.yaml"
    path.write_text(yaml.safe_dump(space))
    storage = tmp_path / "results"
    res = run_sweep_cli(path, storage)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    records = list(sweep_records(storage, "t8").values())
    assert len(records) == 2
    for rec in records:
        cert = rec["certification"]
        assert [r["index"] for r in cert["rows"]] == [30 * k for k in range(6)]
        shards = sorted((trial_dir(storage, rec["trial_id"]) / "certify").glob("*/*.json"))
        assert len(shards) == 2  # one Ray task per slot on this 2-CPU machine
        merged = sorted((r for p in shards for r in json.loads(p.read_text())),
                        key=lambda r: r["index"])
        assert merged == cert["rows"]
        expected = [100.0 * sum(r["correct"] and r["radius"] >= radius for r in merged) / 6
                    for radius in cert["radii"]]
        assert cert["certified_accuracy"] == pytest.approx(expected)
        assert cert["sigma"] == 0.25 and cert["n"] == 200
    # A second run has nothing left to train or certify.
    again = run_sweep_cli(path, storage, timeout=300)
    assert again.returncode == 0 and "[certify]" not in again.stdout
    table = subprocess.run([sys.executable, "-m", "maxup", "tables", str(storage / "t8"),
                            "--table", "8"], capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert "MaxUp+Gauss" in table.stdout and "Gaussian aug. (m = 1)" in table.stdout
    # Regression: only certify.* changes — nothing trains again; each model is certified
    # once more with the new settings, and both certifications stay in its record.
    space["base"]["certify"]["n"] = 300
    path.write_text(yaml.safe_dump(space))
    third = run_sweep_cli(path, storage, timeout=300)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "skipping 2 trial(s)" in third.stdout and "to run," not in third.stdout
    assert third.stdout.count("certified accuracy") == 2
    for rec in sweep_records(storage, "t8").values():
        assert sorted(c["n"] for c in rec["certifications"].values()) == [200, 300]
        dirs = sorted(p.name for p in (trial_dir(storage, rec["trial_id"]) / "certify").iterdir())
        assert len(dirs) == 2  # one folder of shards per certification id
    from maxup.analysis import load_records

    assert sorted(c["n"] for c in load_records(storage / "t8")["certification"]) == [300, 300]
