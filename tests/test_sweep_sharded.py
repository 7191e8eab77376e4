"""A sweep whose trials are data-parallel: Ray Train inside Ray Tune, on this 2-CPU machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sweep_helpers import run_sweep_cli, sweep_records, trial_dir

from maxup.platform.space import load_space

ROOT = Path(__file__).resolve().parents[1]


def _run_sharded_sweep(tmp_path: Path, name: str, *, epochs: int, cpus_per_worker: float):
    """Two 2-worker digits trials (m = 1, 2) through ``maxup sweep``; (space, storage, result)."""
    space = {
        "name": name, "base_config": str(ROOT / "configs" / "digits_smoke.yaml"),
        "base": {"model": {"name": "mlp"}, "train": {"epochs": epochs, "workers": 2,
                                                     "progress": False}},
        "grid": {"maxup.m": [1, 2]}, "seeds": 1,
        "resources": {"cpus_per_worker": cpus_per_worker}, "concurrency": 2, "retries": 1,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    storage = tmp_path / "results"
    res = run_sweep_cli(path, storage, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return path, storage, res


@pytest.mark.ray
@pytest.mark.slow
def test_regression_two_worker_trials_fill_the_machine_without_deadlock(tmp_path):
    """Each trial's 2 workers need both CPUs. The trial's own Tune actor used to hold 0.001
    CPU, so the workers' placement group never fit and the sweep waited forever."""
    path, storage, res = _run_sharded_sweep(tmp_path, "sharded", epochs=2, cpus_per_worker=1)
    assert "1 at a time" in res.stdout  # 2 CPUs ÷ (2 workers × 1 CPU)
    expected = {t.trial_id: t for t in load_space(path).expand()}
    recs = sweep_records(storage, "sharded")
    assert sorted(recs) == sorted(expected)
    for tid, rec in recs.items():
        assert rec["status"] == "completed"
        assert rec["environment"]["workers"] == 2
        assert [h["epoch"] for h in rec["history"]] == [1, 2]
        assert rec["axes"] == expected[tid].axes and rec["sweep"] == "sharded"
        assert (trial_dir(storage, tid) / "ray_train").is_dir()
        # What Ray granted each worker is what the space asked for, and its torch threads.
        assert rec["environment"]["worker_resources"] == {"CPU": 1.0}
        assert rec["environment"]["torch_threads"] == 1


@pytest.mark.ray
@pytest.mark.slow
def test_cpus_per_worker_reaches_the_workers_ray_grants(tmp_path):
    """resources.cpus_per_worker flows from the space to Tune's concurrency, Ray Train's
    ScalingConfig and the workers: with 0.5 CPU each, two 2-worker trials run at once on two
    CPUs, and each worker is granted exactly 0.5 CPU (threads: at least 1)."""
    _, storage, res = _run_sharded_sweep(tmp_path, "half", epochs=1, cpus_per_worker=0.5)
    assert "2 at a time" in res.stdout  # 2 CPUs ÷ (2 workers × 0.5 CPU)
    recs = sweep_records(storage, "half")
    assert len(recs) == 2
    for rec in recs.values():
        assert rec["status"] == "completed"
        assert rec["environment"]["worker_resources"] == {"CPU": 0.5}
        assert rec["environment"]["torch_threads"] == 1
