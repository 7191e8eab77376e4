"""Search spaces (``search_spaces/*.yaml``): parse, expand and validate a sweep in full.

A search space names one experiment::

    name: quickstart                 # storage folder and record label
    description: ...
    paper_table: null                # the paper table it feeds ("3", "4", "5", "8", "2") or null
    base_config: configs/x.yaml      # optional, relative to the repository root or this file
    base: {...}                      # a run config (maxup.config.RunConfig) over base_config
    grid:                            # cartesian product of axes, applied in the order listed
      maxup.m: [1, 4]                #   a dotted config key → list of values
      arch:                          #   a named axis → label → bundle of dotted overrides
        resnet110: {model.name: resnet110, maxup.m: 4}
        wrn28_10: {model.name: wrn28_10, maxup.m: 10}
    seeds: 5                         # a count (0..4) or an explicit list: its own axis
    resources: {cpus_per_trial: 1, gpus_per_trial: 0}
    concurrency: 2                   # most trials at once (further capped by the resources)
    retries: 2                       # per-trial retries from the last checkpoint
    order_seed: 0                    # seeds the run order

Expansion is complete and validated before anything starts: every trial's config passes the
run-config validation; unknown axes, empty axes, duplicate points, duplicate seeds and
impossible resources raise a one-line :class:`maxup.errors.ConfigError`.

Local paths in trial configs (``data.root``, ``model.weights``) given relative are relative
to the directory the command runs from, not to this file (unlike ``base_config``): expansion
makes them absolute (:mod:`maxup.paths`), since trials run in Ray workers elsewhere.
"""

from __future__ import annotations

import itertools
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maxup import records
from maxup.config import (
    MAX_SEED,
    Range,
    check_registered_names,
    from_dict,
    read_yaml,
    set_dotted,
    to_dict,
)
from maxup.errors import ConfigError, UsageError
from maxup.paths import resolve_paths

REPO_ROOT = Path(__file__).resolve().parents[2]
SPACE_KEYS = ("name", "description", "paper_table", "base_config", "base", "grid", "seeds",
              "resources", "concurrency", "retries", "order_seed")
RESOURCE_KEYS = ("cpus_per_trial", "gpus_per_trial", "cpus_per_worker")
#: What each resource, and the integer fields of a space, accept.
RESOURCE_RANGE = Range(0, 4096)
SPACE_RANGES = {"concurrency": Range(1, 10_000), "retries": Range(0, 100),
                "order_seed": Range(0, MAX_SEED)}
MAX_SEEDS = 1000  # seeds per arm


@dataclass
class Trial:
    """One point of the sweep: a full resolved config and what distinguishes it."""

    trial_id: str
    config: dict
    axes: dict  # axis name → value or label, seed included
    seed: int


@dataclass
class SweepSpec:
    """A parsed search space; :meth:`expand` gives its trials in run order."""

    name: str
    description: str = ""
    paper_table: str | None = None
    base: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    resources: dict = field(default_factory=dict)
    concurrency: int = 1
    retries: int = 2
    order_seed: int = 0
    source: str = ""
    # Relative data.root and model.weights resolve against this directory (maxup/paths.py);
    # None: the working directory when the trials are expanded (the command's).
    base_dir: str | None = None
    # The command-line overrides applied (apply_overrides), in the order given: what the
    # sweep's manifest stores so that status, report and a rerun plan the same trials.
    overrides: dict = field(default_factory=dict)

    @property
    def cpus_per_trial(self) -> float:
        return float(self.resources.get("cpus_per_trial", 1))

    @property
    def gpus_per_trial(self) -> float:
        return float(self.resources.get("gpus_per_trial", 0))

    @property
    def cpus_per_worker(self) -> float:
        """CPUs each Ray Train worker of a sharded trial holds (and its torch threads)."""
        return float(self.resources.get("cpus_per_worker", 1))

    def expand(self) -> list[Trial]:
        """All trials (grid × seeds), validated, in a seeded order that is stratified by seed:
        every arm's first seed comes before any arm's second, so every arm has early results.

        Each trial's local paths are absolute (:func:`maxup.paths.resolve_paths` against
        ``base_dir``) before its id is computed: what the preflight checks, the trials open
        and the records store.
        """
        base_dir = self.base_dir if self.base_dir is not None else os.getcwd()
        axes = list(self.grid.items())
        points = list(itertools.product(*[_axis_values(k, v) for k, v in axes])) if axes else [()]
        arms: list[tuple[dict, dict]] = []
        for point in points:
            config = _deep_copy(self.base)
            labels: dict[str, Any] = {}
            for (axis, _), (label, overrides) in zip(axes, point, strict=True):
                labels[axis] = label
                for key, value in overrides.items():
                    set_dotted(config, key, value)
            arms.append((config, labels))
        trials: list[Trial] = []
        seen: dict[str, dict] = {}
        for rank, seed in enumerate(self.seeds):
            order = list(range(len(arms)))
            random.Random(self.order_seed * 1_000_003 + rank).shuffle(order)
            for i in order:
                config, labels = arms[i]
                config = _deep_copy(config)
                config["seed"] = seed
                resolved = resolve_paths(_validated(config, labels), base_dir)
                tid = records.trial_id(resolved)
                axes_with_seed = {**labels, "seed": seed}
                if tid in seen:
                    raise ConfigError("grid", axes_with_seed,
                                      f"distinct points (same config as {seen[tid]})")
                seen[tid] = axes_with_seed
                trials.append(Trial(tid, resolved, axes_with_seed, seed))
        return trials

    def varying_axes(self) -> list[str]:
        """Axis names shown in tables of trials (the grid's axes, then seed)."""
        return [*self.grid.keys(), "seed"]


def _axis_values(axis: str, values: Any) -> list[tuple[Any, dict]]:
    """An axis as (label, overrides) pairs."""
    if "." in axis:
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{axis}", values, "a non-empty list of values")
        return [(v, {axis: v}) for v in values]
    if not isinstance(values, dict) or not values:
        raise ConfigError(f"grid.{axis}", values,
                          "a dotted config key with a list, or a named axis mapping "
                          "label → {dotted.key: value}")
    out = []
    for label, overrides in values.items():
        if overrides is None:
            overrides = {}
        if not isinstance(overrides, dict) or not all(
                isinstance(k, str) and ("." in k or k == "seed") for k in overrides):
            raise ConfigError(f"grid.{axis}.{label}", overrides,
                              "a mapping of dotted config keys to values")
        if "seed" in overrides:
            raise ConfigError(f"grid.{axis}.{label}.seed", overrides["seed"],
                              "seeds only through the 'seeds' field")
        out.append((label, overrides))
    return out


def _validated(config: dict, labels: dict) -> dict:
    try:
        cfg = from_dict(config)
    except ConfigError as exc:
        where = ", ".join(f"{k}={_short(v)}" for k, v in labels.items())
        raise ConfigError(exc.field, exc.value, exc.allowed + (f" (trial {where})" if where
                                                               else "")) from None
    return to_dict(cfg)


def _short(value) -> str:
    """An axis value as a label, at most 80 characters (a value can be a whole document)."""
    from maxup.errors import bounded_repr

    text, complete = bounded_repr(value, 80) if not isinstance(value, str) else (value, True)
    return text if complete and len(text) <= 80 else text[:60] + "..."


def _deep_copy(d: dict) -> dict:
    import copy

    return copy.deepcopy(d)


def load_space(path: str | Path) -> SweepSpec:
    """Parse a search-space YAML file into a :class:`SweepSpec` (not yet expanded)."""
    path = Path(path)
    data = read_yaml(path)
    if not data:
        raise UsageError(f"search space {str(path)!r} is empty; allowed: a mapping with a base "
                         "(base or base_config), a grid and seeds")
    unknown = sorted(set(data) - set(SPACE_KEYS), key=str)
    if unknown:
        raise ConfigError(str(unknown[0]), data[unknown[0]],
                          "known keys: " + ", ".join(SPACE_KEYS))
    if not data.get("grid") and data.get("seeds") is None:
        raise UsageError(f"search space {str(path)!r} has no grid and no seeds, so nothing to "
                         "sweep; allowed: a 'grid' of axes, 'seeds', or both")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ConfigError("name", name, "a non-empty name of letters, digits, '-' and '_'")
    base: dict = {}
    if data.get("base_config") is not None:
        base = read_yaml(_resolve(data["base_config"], path))
    base_section = data.get("base") or {}
    if not isinstance(base_section, dict):
        raise ConfigError("base", base_section, "a mapping of run-config sections (a run config)")
    for key, value in _flatten(base_section).items():
        set_dotted(base, key, value)
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError("grid", grid, "a mapping of axes")
    for axis, values in grid.items():
        if not isinstance(axis, str) or not axis:
            raise ConfigError("grid", axis, "axes named by a dotted config key or a label")
        if isinstance(values, list | dict) and not values:
            raise ConfigError(f"grid.{axis}", values,
                              "a non-empty list of values or mapping of labels (an empty axis "
                              f"leaves search space {str(path)!r} with zero trials)")
        if axis == "seed":
            raise ConfigError("grid.seed", values, "seeds only through the 'seeds' field")
    seeds = _seeds(data.get("seeds", 1))
    resources = data.get("resources") or {}
    if not isinstance(resources, dict):
        raise ConfigError("resources", resources, "a mapping with " + ", ".join(RESOURCE_KEYS))
    for key, value in resources.items():
        _check_resource(key, value)
    concurrency = _space_int(data, "concurrency", 1)
    retries = _space_int(data, "retries", 2)
    order_seed = _space_int(data, "order_seed", 0)
    paper_table = data.get("paper_table")
    if not isinstance(paper_table, str | int | None) or isinstance(paper_table, bool):
        raise ConfigError("paper_table", paper_table, "null or a paper table number, e.g. 3")
    description = data.get("description", "")
    if not isinstance(description, str | None):
        raise ConfigError("description", description, "a string")
    return SweepSpec(name=name, description=description or "",
                     paper_table=None if paper_table is None else str(paper_table), base=base,
                     grid=grid, seeds=seeds, resources=resources, concurrency=concurrency,
                     retries=retries, order_seed=order_seed, source=str(path))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            # An empty mapping (`certify: {}`) adds nothing; it must not wipe base_config's.
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _resolve(ref: str, space_path: Path) -> Path:
    if not isinstance(ref, str) or not ref:
        raise ConfigError("base_config", ref, "the path of a YAML run config (relative to the "
                          "repository root or to the search-space file)")
    for candidate in (space_path.parent / ref, REPO_ROOT / ref, Path(ref)):
        if candidate.is_file():
            return candidate
    raise ConfigError("base_config", ref, "an existing YAML file (relative to the repository "
                      "root or to the search-space file)")


def _check_resource(key: str, value: Any) -> None:
    if key not in RESOURCE_KEYS:
        raise ConfigError(f"resources.{key}", value, "one of " + ", ".join(RESOURCE_KEYS))
    if value not in RESOURCE_RANGE:
        raise ConfigError(f"resources.{key}", value, RESOURCE_RANGE.allowed(key, False))


#: Fields of the space itself that the command line may override (``--seeds=3``,
#: ``--concurrency=2``, ``--retries=0``, ``--resources.cpus_per_trial=2``).
SPACE_OVERRIDES = ("seeds", "concurrency", "retries", "order_seed")


def apply_overrides(spec: SweepSpec, overrides: dict) -> None:
    """Apply command-line overrides to a space, before expansion.

    The space's own fields (:data:`SPACE_OVERRIDES` and ``resources.*``) replace the file's,
    validated as the file's are. Every other key is a dotted run-config key: it goes into the
    space's base config, so it enters every trial's config (and id, unless the key is not
    part of the identity). A run-config key the grid sets is refused: the grid would overrule
    it for some trials.

    Raises:
        ConfigError: a space field out of range, an unknown resource, or a key the grid sets.
    """
    grid_keys = set()
    for axis, values in spec.grid.items():
        if "." in str(axis):
            grid_keys.add(axis)
        elif isinstance(values, dict):
            for bundle in values.values():
                grid_keys.update((bundle or {}).keys())
    for key, value in overrides.items():
        if key == "seed":  # every trial's seed comes from the seeds: this would do nothing
            raise ConfigError(key, value, "the seeds through --seeds=N or --seeds=[0,3]")
        if key == "seeds":
            spec.seeds = _seeds(value)
        elif key in SPACE_OVERRIDES:
            setattr(spec, key, _space_int({key: value}, key, 0))
        elif key == "resources" or key.startswith("resources."):
            if key == "resources":
                raise ConfigError(key, value, "one resource per override, e.g. "
                                  "--resources.cpus_per_trial=2 (one of "
                                  + ", ".join(RESOURCE_KEYS) + ")")
            sub = key.split(".", 1)[1]
            _check_resource(sub, value)
            spec.resources = {**spec.resources, sub: value}
        elif key in grid_keys:
            raise ConfigError(key, value, "a key the space's grid does not set (the grid "
                              "gives it per trial)")
        else:
            set_dotted(spec.base, key, value)
        spec.overrides[key] = value


def _space_int(data: dict, key: str, default: int) -> int:
    value = data.get(key, default)
    rng = SPACE_RANGES[key]
    if isinstance(value, bool) or not isinstance(value, int) or value not in rng:
        raise ConfigError(key, value, rng.allowed(key, True))
    return value


def _seeds(value: Any) -> list[int]:
    allowed = (f"a count >= 1 and <= {MAX_SEEDS} or a list of at most {MAX_SEEDS} distinct "
               f"ints >= 0 and <= {MAX_SEED}")
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_SEEDS:
            raise ConfigError("seeds", value, allowed)
        return list(range(value))
    if isinstance(value, list) and 0 < len(value) <= MAX_SEEDS and all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED
            for s in value):
        dupes = sorted({s for s in value if value.count(s) > 1})
        if dupes:
            raise ConfigError("seeds", value, f"distinct seeds (repeated: {dupes})")
        return list(value)
    raise ConfigError("seeds", value, allowed)


def check_space(spec: SweepSpec, trials: list[Trial], cluster_cpus: float | None,
                cluster_gpus: float | None) -> None:
    """Refuse unknown model/dataset names and trials that can never be placed on the cluster."""
    pairs = {(t.config["model"]["name"], t.config["data"]["name"]): t.config for t in trials}
    for config in pairs.values():
        check_registered_names(from_dict(config))
    check_resources(spec, trials, cluster_cpus, cluster_gpus)


def check_resources(spec: SweepSpec, trials: list[Trial], cluster_cpus: float | None,
                    cluster_gpus: float | None) -> None:
    """Refuse trials that can never be placed on the cluster (no torch needed).

    Raises:
        ConfigError: ``resources.cpus_per_trial`` or ``resources.gpus_per_trial`` above what
            the cluster has.
    """
    need_cpu = max((trial_cpus(spec, t.config) for t in trials), default=0.0)
    if cluster_cpus is not None and need_cpu > cluster_cpus:
        raise ConfigError("resources.cpus_per_trial", need_cpu,
                          f"at most the cluster's {cluster_cpus:g} CPUs")
    if cluster_gpus is not None and spec.gpus_per_trial > cluster_gpus:
        raise ConfigError("resources.gpus_per_trial", spec.gpus_per_trial,
                          f"at most the cluster's {cluster_gpus:g} GPUs")


def refuse_here(spec: SweepSpec, trials: list[Trial], cpus: float, gpus: float) -> None:
    """Refuse, with what to do instead, a space this machine cannot run (its trials ask for
    more CPUs or GPUs than it has; typically a GPU space on a CPU machine).

    Raises:
        UsageError: one line: what the space asks, what this machine has, and the three ways
            on (a cluster, the priced dry run, resource overrides that fit here).
    """
    try:
        check_resources(spec, trials, cpus, gpus)
    except ConfigError as exc:
        need_cpu = max(trial_cpus(spec, t.config) for t in trials)
        sharded = any(t.config["train"]["workers"] > 1 for t in trials)
        fit = []
        if need_cpu > cpus and sharded:
            workers = max(t.config["train"]["workers"] for t in trials)
            fit.append(f"--resources.cpus_per_worker={max(1.0, cpus // workers):g}")
        elif need_cpu > cpus:
            fit.append(f"--resources.cpus_per_trial={cpus:g}")
        if spec.gpus_per_trial > gpus:
            fit.append(f"--resources.gpus_per_trial={gpus:g}")
        if spec.gpus_per_trial > gpus:  # the GPUs are what is missing: name them first
            field, value, wants = "resources.gpus_per_trial", spec.gpus_per_trial, "GPUs"
        else:
            field, value, wants = exc.field, exc.value, "more CPUs"
        raise UsageError(
            f"{field}: got {value:g}; search space {spec.name} wants {wants} ("
            f"{need_cpu:g} CPU and {spec.gpus_per_trial:g} GPU per trial) and this machine "
            f"has {cpus:g} CPU and {gpus:g} GPU; allowed: a cluster that has them (--address "
            f"auto or HOST:PORT), the priced plan first (--dry-run, or --dry-run --plan-for "
            f"cluster.yaml), or overrides that fit here ({' '.join(fit)}; trials on a CPU "
            "are slow)") from None


def trial_cpus(spec: SweepSpec, config: dict) -> float:
    """CPUs one trial holds: its own when it trains in-process, its workers' when sharded."""
    workers = config["train"]["workers"]
    if workers <= 1:
        return spec.cpus_per_trial
    return workers * spec.cpus_per_worker


def max_concurrent(spec: SweepSpec, trials: list[Trial], cluster_cpus: float,
                   cluster_gpus: float) -> int:
    """How many trials can run at once without any waiting on another's workers."""
    need = max((trial_cpus(spec, t.config) for t in trials), default=1.0)
    limit = spec.concurrency
    if need > 0:
        limit = min(limit, int(cluster_cpus // need))
    gpus = spec.gpus_per_trial
    if gpus > 0:
        limit = min(limit, int(cluster_gpus // gpus))
    return max(1, limit)
