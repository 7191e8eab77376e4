"""Remote sweep storage: the mirror, and a sweep that resumes on a node with no local state."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sweep_helpers import run_sweep_cli, sweep_records, trial_dir

from maxup.platform.storage import scratch_root
from maxup.store import Storage, is_remote

ROOT = Path(__file__).resolve().parents[1]


def test_mirror_round_trip_and_missing(tmp_path):
    remote = tmp_path / "bucket"
    mirror = Storage(f"file://{remote}/sweep")
    src = tmp_path / "a.json"
    src.write_text('{"x": 1}')
    mirror.put(src, "records/a.json")
    assert (remote / "sweep" / "records" / "a.json").read_text() == '{"x": 1}'
    assert mirror.list("records") == ["a.json"]
    assert mirror.list("nothing-here") == []
    out = tmp_path / "local" / "a.json"
    assert mirror.get("records/a.json", out) and out.read_text() == '{"x": 1}'
    assert not mirror.get("records/missing.json", tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_remote_detection_and_scratch(monkeypatch, tmp_path):
    assert is_remote("s3://b/p") and is_remote("file:///x") and not is_remote("/data/x")
    monkeypatch.setenv("MAXUP_SCRATCH", str(tmp_path))
    a, b = scratch_root("s3://b/p/one"), scratch_root("s3://b/p/two")
    assert a.parent == tmp_path and a != b


def test_unknown_storage_scheme_is_refused_in_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "maxup", "sweep",
                          str(ROOT / "search_spaces" / "quickstart.yaml"), "--dry-run",
                          "--storage", "nosuchscheme://bucket/x"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "--storage" in res.stderr


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_on_uri_storage_resumes_from_the_remote_copy(tmp_path):
    space = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    space.update(name="remote", seeds=1)
    space["base"]["train"].update(epochs=3, checkpoint_every=1)
    path = tmp_path / "remote.yaml"
    path.write_text(yaml.safe_dump(space))
    uri = f"file://{tmp_path / 'bucket'}"
    env = {**os.environ, "MAXUP_SCRATCH": str(tmp_path / "scratch")}

    def sweep():
        return run_sweep_cli(path, uri, env=env)

    first = sweep()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    bucket = tmp_path / "bucket"
    recs = sweep_records(bucket, "remote")
    assert len(recs) == 2 and all(r["status"] == "completed" for r in recs.values())
    for tid in recs:
        assert (trial_dir(bucket, tid) / "checkpoints" / "last.pt").exists()
    assert f"table: maxup tables {uri}/remote" in first.stdout

    # A fresh node: no local scratch. One record is rolled back to "running" remotely, as if
    # the trial had been interrupted after its last checkpoint.
    shutil.rmtree(tmp_path / "scratch")
    tid, rec = next(iter(recs.items()))
    rec["status"] = "running"
    (trial_dir(bucket, tid) / "record.json").write_text(json.dumps(rec))
    second = sweep()
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "1 trial(s) to run" in second.stdout
    local_log = next((tmp_path / "scratch").glob(f"*/trials/{tid}/log.txt")).read_text()
    assert "resumed from" in local_log and "after epoch 3" in local_log
    again = json.loads((trial_dir(bucket, tid) / "record.json").read_text())
    assert again["status"] == "completed"
    assert [h["epoch"] for h in again["history"]] == [1, 2, 3]
    assert again["created"] == rec["created"]
