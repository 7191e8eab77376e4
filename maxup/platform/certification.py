"""Certification of a sweep's trained models as Ray tasks, one per shard of test images.

After the training phase, every completed trial whose sweep config asks for certification
(``certify.enabled``) and whose record holds no certification with those settings (its
*certification id*, :mod:`maxup.identity`) is certified (Cohen et al.'s CERTIFY,
:mod:`maxup.certify`) by ``shards`` Ray tasks, each a contiguous slice of the certified images
(every ``skip``-th test image). The settings come from the sweep's config, not from the one
the model was trained under: a trial trained by another sweep, or certified there with
another ``n``, trains nothing again and gets a certification of its own. Image i's noise is
seeded from (seed, i), so the shards give exactly the rows of one whole run. Each finished
shard is written atomically to its trial's folder (:meth:`maxup.store.TrialDir.shard`); when
all are there the rows are merged into the trial's record (``certifications``,
docs/records.md). An interrupted phase resumes with the missing shards only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from maxup import records
from maxup.io import atomic_write_json, atomic_write_text


def shard_bounds(num_images: int, skip: int, shards: int) -> list[tuple[int, int]]:
    """``(start, stop)`` dataset-index slices, aligned to ``skip``, covering the certified images.

    Args:
        num_images: how many images are certified (positions 0, skip, 2·skip, …).
        skip: stride between certified dataset indices.
        shards: number of slices wanted (fewer when there are fewer images).
    """
    shards = max(1, min(shards, num_images))
    edges = [round(k * num_images / shards) for k in range(shards + 1)]
    return [(a * skip, b * skip) for a, b in zip(edges, edges[1:], strict=False) if b > a]


def certified_image_count(test_size: int, certify_cfg: dict) -> int:
    """Number of test images a trial certifies (every ``skip``-th, capped by ``max_images``)."""
    count = len(range(0, test_size, certify_cfg["skip"]))
    if certify_cfg["max_images"] is not None:
        count = min(count, certify_cfg["max_images"])
    return count


def certify_shard(checkpoint: str, start: int, stop: int, certify: dict, threads: int = 1,
                  remote: tuple[str, str] | None = None) -> list[dict]:
    """Certify dataset indices ``range(start, stop, skip)`` of a trial's trained model.

    Args:
        checkpoint: path of the trial's final checkpoint (holds its config).
        start, stop: the shard's slice of the test set.
        certify: the ``certify`` config section to certify with.
        threads: torch intra-op threads for this task.
        remote: ``(uri, relative path)`` to fetch the checkpoint from when this node lacks it.
    """
    import torch

    if remote is not None and not Path(checkpoint).exists():
        from maxup.store import Storage

        Storage(remote[0]).get(remote[1], Path(checkpoint))

    from maxup.certify import certify_dataset, load_model_from_checkpoint, num_classes_of
    from maxup.data import build_dataset

    # This runs as a Ray task (run_certification), in a Ray worker process that holds the
    # task's CPUs: its thread setting is ours to choose (maxup.certify never changes it).
    torch.set_num_threads(max(1, int(threads)))
    model, config = load_model_from_checkpoint(checkpoint)
    c = certify
    test_set = build_dataset(config["data"]["name"], split="test", root=config["data"]["root"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return certify_dataset(model, test_set, sigma=c["sigma"] or config["augment"]["sigma"],
                           n0=c["n0"], n=c["n"], alpha=c["alpha"], batch=c["batch"],
                           skip=c["skip"], start=start, stop=stop,
                           num_classes=num_classes_of(config), seed=config["seed"],
                           device=device)


def needing_certification(stored: dict, trials) -> list[tuple[dict, records.TrialRecord]]:
    """(config, record) of the trials that are trained, want certification with their
    config's settings and have no certification with those settings yet.

    Args:
        stored: trial id -> :class:`maxup.store.StoredTrial`, as the sweep read them.
        trials: the sweep's :class:`~maxup.platform.space.Trial` list.
    """
    todo = []
    for t in trials:
        if not t.config["certify"]["enabled"]:
            continue
        st = stored.get(t.trial_id)
        rec = None if st is None else st.record
        if rec is not None and rec.completed and rec.certification_for(t.config) is None:
            todo.append((t.config, rec))
    return todo


def run_certification(layout, todo: list[tuple[dict, records.TrialRecord]], *, shards: int,
                      cpus: float, gpus: float, echo: Callable[[str], None]) -> list[str]:
    """Certify the given trials; returns the ids that got a certification.

    Args:
        layout: the sweep's :class:`~maxup.platform.sweep.SweepLayout`.
        todo: (sweep config, record) pairs, from :func:`needing_certification`.
        shards: Ray tasks per trial.
        cpus, gpus: resources of one shard task.
        echo: progress lines.
    """
    import ray

    from maxup import identity
    from maxup.certify import certification_summary, cohen_tsv
    from maxup.data import dataset_info

    if not todo:
        return []
    remote = ray.remote(certify_shard).options(num_cpus=cpus, num_gpus=gpus, max_retries=2)
    pending: dict = {}
    plans: dict[str, list[Path]] = {}
    for config, rec in todo:
        tid, c = rec.trial_id, config["certify"]
        test_size = dataset_info(config["data"]["name"]).test_size
        if test_size is None:
            from maxup.data import build_dataset

            test_size = len(build_dataset(config["data"]["name"], split="test",
                                          root=config["data"]["root"]))
        bounds = shard_bounds(certified_image_count(test_size, c), c["skip"], shards)
        files, cid = layout.trial(tid), identity.certification_id(config)
        plans[tid] = [files.shard(cid, k, len(bounds)) for k in range(len(bounds))]
        ckpt = files.checkpoint
        source = layout.remote_source(ckpt)
        for path, (start, stop) in zip(plans[tid], bounds, strict=True):
            if not path.exists() and not layout.pull(path):
                pending[remote.remote(str(ckpt), start, stop, c, max(1, int(cpus)),
                                      source)] = path
        echo(f"[certify] {tid}: {len(bounds)} shard(s), "
             f"{sum(not p.exists() for p in plans[tid])} to run")
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        path = pending.pop(done[0])
        atomic_write_json(path, ray.get(done[0]))
        layout.push(path)
    finished = []
    for config, rec in todo:
        tid, c = rec.trial_id, config["certify"]
        rows = sorted((r for p in plans[tid] for r in json.loads(p.read_text())),
                      key=lambda r: r["index"])
        sigma = c["sigma"] or config["augment"]["sigma"]
        cert = certification_summary(rows, sigma=sigma, n0=c["n0"], n=c["n"], alpha=c["alpha"],
                                     skip=c["skip"], batch=c["batch"])
        # Cohen et al.'s per-image file beside the shards, for their analyze.py.
        tsv = layout.trial(tid).certify_tsv(identity.certification_id(config))
        atomic_write_text(tsv, cohen_tsv(rows))
        layout.push(tsv)
        # Re-read under the same name: another sweep may have added its own certification.
        rec = records.load_record(layout.record(tid)) or rec
        rec.add_certification(config, cert)
        rec.updated = records.now()
        records.write_record(layout.record(tid), rec)
        layout.push(layout.record(tid))
        acc = cert["certified_accuracy"]
        echo(f"[certify] {tid}: certified accuracy {acc[0]:.1f}% at r=0, "
             f"{acc[len(acc) // 2]:.1f}% at r={cert['radii'][len(acc) // 2]:g}")
        finished.append(tid)
    return finished
