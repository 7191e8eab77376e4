"""Checks before a sweep launches: what every trial needs that can be checked cheaply.

A sweep whose data is missing used to launch every trial, each failing with the same data
error after its start-up. :func:`preflight` instead builds each distinct dataset split the
trials read (once per data name, root and transform; the registry's own loaders decide what
"present and readable" means and name the missing path and how to get it) and checks each
local weights file, and raises the first problem as one line before anything starts.
:func:`preflight_remote` runs the same check as one small Ray task on the cluster. Trial
configs hold their local paths absolute (:mod:`maxup.paths`, on expansion), so a path checked
here is the one the trials open, whatever their working directory.
"""

from __future__ import annotations

from maxup.errors import ConfigError, DataError


def _where(trials) -> str:
    n = len(trials)
    first = ", ".join(f"{k}={v}" for k, v in trials[0].axes.items())
    return f" (needed by {n} trial{'s' if n != 1 else ''}, e.g. {first})"


def preflight(trials) -> None:
    """Raise DataError/ConfigError for the first missing dataset or weights file.

    Datasets with ``data.download: true`` are not checked (a trial fetches them).

    Args:
        trials: the sweep's trials (:class:`maxup.platform.space.Trial`), or any objects
            with ``config`` and ``axes``.
    """
    from maxup.data import build_dataset
    from maxup.data.corpus import is_text_dataset, load_corpus

    groups: dict[tuple, list] = {}
    weights: dict[str, list] = {}
    for t in trials:
        d = t.config["data"]
        if not d.get("download"):
            key = (d["name"], d.get("root"), d.get("train_transform"), d.get("version"))
            groups.setdefault(key, []).append(t)
        w = t.config["model"].get("weights")
        if w:
            weights.setdefault(w, []).append(t)
    for (name, root, transform, version), group in groups.items():
        try:
            if is_text_dataset(name):  # the corpus version the trials read (KJV: 1 or 2)
                load_corpus(name, root, version)
                continue
            for split in ("train", "test"):
                build_dataset(name, split=split, root=root, train_transform=transform or "none")
        except DataError as exc:
            raise DataError(f"{exc}{_where(group)}") from None
    import os

    for path, group in weights.items():
        local = os.path.expanduser(path)
        if not os.path.isfile(local) or not os.access(local, os.R_OK):
            raise ConfigError("model.weights", path,
                              f"an existing, readable local file{_where(group)}")


def _remote_check(payload: list[dict]) -> str | None:
    from types import SimpleNamespace

    from maxup.errors import UsageError

    try:
        preflight([SimpleNamespace(**p) for p in payload])
    except UsageError as exc:
        return str(exc)
    return None


def preflight_remote(trials, resources: dict, timeout_s: float = 600.0) -> str | None:
    """Run :func:`preflight` in one Ray task placed like a trial; the problem, or None.

    Args:
        trials: the trials to check.
        resources: the task's ``num_cpus``/``num_gpus`` (a trial's), so it runs where trials
            will run.
        timeout_s: how long to wait for the task (a node may have to start first).

    Returns:
        The one-line problem, None when everything is present, or a line saying the check
        could not finish (the sweep then goes on; the trials report it themselves).
    """
    import ray

    payload = [{"config": t.config, "axes": t.axes} for t in trials]
    task = ray.remote(**resources)(_remote_check)
    try:
        return ray.get(task.remote(payload), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        return None
