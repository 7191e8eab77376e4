"""Planning a sweep for where it will run: this machine, a live cluster or a cluster.yaml.

A :class:`Target` is a list of slots (one trial at a time each) with the device each slot
trains on. :func:`local_target` is this machine (its CPUs and GPUs, the space's per-trial
resources and ``concurrency``); :func:`live_target` a running cluster's alive nodes, read from
its GCS (``--address``); :func:`cluster_target` reads a Ray cluster-launcher file —
``available_node_types`` (``resources`` and ``max_workers`` of each) and the global
``max_workers`` — and fills node types in file order up to ``concurrency`` slots. A node
type's GPU model comes from a ``accelerator_type:NAME`` resource when it declares one, else
from its AWS instance family (:data:`INSTANCE_GPUS`).

:func:`price` prices every trial on the target (profiles per device,
:mod:`maxup.platform.cost`), refines the estimates with finished records, and simulates the
longest-first schedule of the trials still to train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from maxup.errors import ConfigError, UsageError
from maxup.platform import cost
from maxup.platform.space import apply_overrides  # noqa: F401 - where callers found it

#: AWS instance family → the GPU its nodes carry (``nvidia-smi`` names).
INSTANCE_GPUS = {
    "g4dn": "Tesla T4", "g5": "NVIDIA A10G", "g6": "NVIDIA L4", "g6e": "NVIDIA L40S",
    "p3": "Tesla V100-SXM2-16GB", "p4d": "NVIDIA A100-SXM4-40GB",
    "p4de": "NVIDIA A100-SXM4-80GB", "p5": "NVIDIA H100 80GB HBM3", "p5e": "NVIDIA H200",
    "p5en": "NVIDIA H200",
}


@dataclass
class Target:
    """Where a sweep is planned to run: a description and one device name per slot."""

    description: str
    slots: list[str]  # device name of each slot
    kinds: dict[str, str] = field(default_factory=dict)  # device name → cpu/gpu
    needs_cluster: str | None = None  # why this machine cannot run the space (dry run)


def local_target(spec, trials, cpus: float, gpus: float) -> Target:
    """This machine: ``max_concurrent`` slots of its GPU (GPU spaces) or CPU."""
    from maxup.platform.space import max_concurrent

    gpu = spec.gpus_per_trial > 0
    name, kind = cost.local_device(want_gpu=gpu)
    slots = max_concurrent(spec, trials, cpus, gpus)
    desc = (f"this machine: {slots} slot(s) of {name} ({cpus:g} CPU, {gpus:g} GPU)")
    return Target(desc, [name] * slots, {name: kind})


def cluster_target(path: str | Path, spec, trials) -> Target:
    """Slots of a Ray cluster-launcher config for this space (see the module docstring).

    Raises:
        UsageError: the file is missing or not YAML.
        ConfigError: a field the plan needs is wrong, or no node type can hold a trial
            (e.g. a GPU space and no node type with GPUs).
    """
    from maxup.config import read_yaml
    from maxup.platform.space import trial_cpus

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--plan-for: {str(path)!r} not found; allowed: a Ray cluster-launcher "
                         "YAML file (e.g. cluster.yaml)")
    data = read_yaml(path)
    types = data.get("available_node_types")
    if not isinstance(types, dict) or not types:
        raise ConfigError(f"{path.name}: available_node_types", types,
                          "a mapping of node types with resources and max_workers")
    total_max = data.get("max_workers")
    if total_max is not None and (not isinstance(total_max, int) or total_max < 0):
        raise ConfigError(f"{path.name}: max_workers", total_max, "an int >= 0")
    need_cpu = max(trial_cpus(spec, t.config) for t in trials)
    need_gpu = spec.gpus_per_trial
    head = data.get("head_node_type")
    slots: list[str] = []
    kinds: dict[str, str] = {}
    parts = []
    nodes_left = total_max if total_max is not None else float("inf")
    any_gpu = False
    max_cpu = max_gpu = 0.0
    for name, node in types.items():
        where = f"{path.name}: available_node_types.{name}"
        if not isinstance(node, dict):
            raise ConfigError(where, node, "a mapping with resources and max_workers")
        res = node.get("resources") or {}
        if not isinstance(res, dict):
            raise ConfigError(f"{where}.resources", res, "a mapping such as {CPU: 4, GPU: 1}")
        n_cpu, n_gpu = float(res.get("CPU", 0) or 0), float(res.get("GPU", 0) or 0)
        any_gpu = any_gpu or n_gpu > 0
        max_cpu, max_gpu = max(max_cpu, n_cpu), max(max_gpu, n_gpu)
        count = node.get("max_workers", 0)
        if not isinstance(count, int) or count < 0:
            raise ConfigError(f"{where}.max_workers", count, "an int >= 0")
        if name == head:
            count = max(count, 1)  # the head node itself exists
        per_node = _per_node(n_cpu, n_gpu, need_cpu, need_gpu)
        if per_node == 0 or count == 0:
            continue
        if name != head:
            count = int(min(count, nodes_left))
            nodes_left -= count
        if count == 0:
            continue
        device, kind = _node_device(where, node, n_gpu, need_gpu)
        take = min(count * per_node, spec.concurrency - len(slots))
        if take <= 0:
            break
        slots += [device] * take
        kinds[device] = kind
        itype = (node.get("node_config") or {}).get("InstanceType", "?")
        parts.append(f"{take} × {name} ({itype}, {device})")
    if not slots:
        if need_gpu > 0 and not any_gpu:
            raise ConfigError(f"{path.name}: available_node_types", sorted(types),
                              f"a node type with GPU resources (the space needs {need_gpu:g} "
                              "GPU per trial)")
        if need_cpu > max_cpu:
            raise ConfigError("resources.cpus_per_trial", need_cpu,
                              f"at most the {max_cpu:g} CPUs of one node of {path.name}")
        if need_gpu > max_gpu:
            raise ConfigError("resources.gpus_per_trial", need_gpu,
                              f"at most the {max_gpu:g} GPUs of one node of {path.name}")
        raise ConfigError(f"{path.name}: available_node_types", sorted(types),
                          f"a node type with at least {need_cpu:g} CPU and {need_gpu:g} GPU "
                          "and max_workers >= 1")
    return Target(f"{path} ({len(slots)} slots: {', '.join(parts)})", slots, kinds)


def live_target(hostport: str, nodes: list[dict], spec, trials) -> Target | None:
    """Slots of a live Ray cluster's alive nodes (:func:`maxup.platform.distributed.
    live_nodes`) for this space, up to ``concurrency``; None when no node can hold a trial.

    A node's GPU model comes from its ``accelerator_type:NAME`` resource (Ray sets it on a
    node whose GPU it recognises), else it is an unnamed ``cluster GPU``; CPU nodes are
    ``cluster CPU`` (the GCS does not say their model).
    """
    from maxup.platform.space import trial_cpus

    need_cpu = max(trial_cpus(spec, t.config) for t in trials)
    need_gpu = spec.gpus_per_trial
    slots: list[str] = []
    kinds: dict[str, str] = {}
    parts = []
    for node in sorted(nodes, key=lambda n: (not n["head"], n["address"])):
        res = node["resources"]
        n_cpu, n_gpu = float(res.get("CPU", 0) or 0), float(res.get("GPU", 0) or 0)
        take = min(_per_node(n_cpu, n_gpu, need_cpu, need_gpu), spec.concurrency - len(slots))
        if take <= 0:
            continue
        if need_gpu > 0:
            accel = [k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")]
            device, kind = (_nvidia_name(accel[0]) if accel else "cluster GPU"), "gpu"
        else:
            device, kind = "cluster CPU", "cpu"
        slots += [device] * take
        kinds[device] = kind
        what = f"{n_cpu:g} CPU, {n_gpu:g} GPU" + (f", {device}" if kind == "gpu" else "")
        parts.append(f"{take} × {node['address']}{' (head)' if node['head'] else ''}: {what}")
    if not slots:
        return None
    return Target(f"the live cluster at {hostport} ({len(slots)} slots on {len(parts)} of its "
                  f"{len(nodes)} alive node(s): {'; '.join(parts)}; an autoscaling cluster "
                  "may add nodes)", slots, kinds)


def _per_node(n_cpu: float, n_gpu: float, need_cpu: float, need_gpu: float) -> int:
    fits = []
    if need_cpu > 0:
        fits.append(int(n_cpu // need_cpu))
    if need_gpu > 0:
        fits.append(int(n_gpu // need_gpu))
    return min(fits) if fits else 1


def _node_device(where: str, node: dict, n_gpu: float, need_gpu: float) -> tuple[str, str]:
    """(device name, kind) a trial uses on this node type."""
    if need_gpu <= 0:
        return "cluster CPU", "cpu"
    for key in node.get("resources") or {}:
        if str(key).startswith("accelerator_type:"):
            return _nvidia_name(str(key).split(":", 1)[1]), "gpu"
    itype = str((node.get("node_config") or {}).get("InstanceType", ""))
    family = itype.split(".", 1)[0]
    if family in INSTANCE_GPUS:
        return INSTANCE_GPUS[family], "gpu"
    raise ConfigError(f"{where}.node_config.InstanceType", itype or None,
                      "an instance type of a known GPU family ("
                      + ", ".join(INSTANCE_GPUS) + ") or a resources entry "
                      "'accelerator_type:NAME'")


def _nvidia_name(accel: str) -> str:
    for name in INSTANCE_GPUS.values():
        if accel.lower() in name.lower().replace(" ", "").replace("-", ""):
            return name
    return accel


# --------------------------------------------------------------------------- pricing

@dataclass
class Priced:
    """A planned sweep: estimates per trial and device, the schedule, totals."""

    target: Target
    trials: list  # space.Trial, in submission order (pending first, longest first)
    pending: list[bool]  # per trial: still to train
    seconds: list[float | None]  # per trial, on the target's (first) device
    notes: list[str]
    wall_s: float | None
    compute_s: float  # Σ trial time still to train (unknown costs excluded)
    unpriced: int
    gpus_per_trial: float
    cpus_per_trial: float


def price(spec, trials, target: Target, statuses: dict, records_seen=(),
          dirs=None) -> Priced:
    """Price a sweep's trials on ``target`` and simulate its longest-first schedule.

    Args:
        spec: the search space.
        trials: its expanded trials.
        target: where it runs.
        statuses: trial id → stored record status (None: not stored); completed trials cost
            nothing, the others are to train.
        records_seen: finished records used to refine estimates (:func:`cost.refinement`).
        dirs: profile folders (default: :func:`cost.profile_dirs`).
    """
    from maxup import identity
    from maxup.platform.space import trial_cpus
    from maxup.records import Status

    devices = list(dict.fromkeys(target.slots))
    notes: list[str] = []
    per_device: dict[str, list[cost.Estimate]] = {}
    facts_cache: dict[tuple, object] = {}
    for dev in devices:
        prof, note = cost.find_profile(dev, target.kinds.get(dev, "gpu"), dirs)
        if note:
            notes.append(note)
        elif prof.estimate:
            notes.append(f"{dev}: {prof.source}")
        # fractional GPUs: trials sharing one GPU, priced with its packing factor
        share = cost.trials_sharing(spec.gpus_per_trial, target.slots.count(dev))
        factors = cost.refinement(records_seen, prof, dev, share)
        ests = []
        for t in trials:
            key = (t.config["data"]["name"], t.config["data"].get("subset"))
            if key not in facts_cache:
                facts_cache[key] = cost.data_facts(t.config)
            est = cost.estimate(t.config, prof, facts_cache[key], share=share)
            ests.append(cost.refined(est, t.config, factors, prof.trial_overhead_s))
        per_device[dev] = ests
        _f, pack_note = cost.packing_factor(prof, share)
        if pack_note:
            notes.append(f"{dev}: {pack_note}")
        if any(cost.is_language_model(t.config) for t in trials):
            notes.append(cost.lm_note(prof) or f"{dev}: no language-model figures")
        for e in ests:
            if e.note and e.seconds is None and e.note not in notes:
                notes.append(e.note)
    pending = [statuses.get(t.trial_id) is not Status.COMPLETED for t in trials]
    first = per_device[devices[0]]
    order = cost.longest_first(trials, [e.seconds for e in first],
                               [identity.arm_id(t.config) for t in trials])
    todo = [i for i in order if pending[i]]
    done = [i for i in order if not pending[i]]
    durations = [[per_device[d][i].seconds or 0.0 for d in target.slots] for i in todo]
    placed = cost.schedule(durations, busy_until=[0.0] * len(target.slots)) if todo else []
    wall = max((p.end for p in placed), default=0.0)
    compute = sum(p.end - p.start for p in placed)
    unpriced = sum(first[i].seconds is None for i in todo)
    return Priced(target, [trials[i] for i in todo + done], [True] * len(todo)
                  + [False] * len(done), [first[i].seconds for i in todo + done], notes,
                  None if unpriced == len(todo) and todo else wall, compute, unpriced,
                  spec.gpus_per_trial, max(trial_cpus(spec, t.config) for t in trials))


def needs_cluster(spec, trials, cpus: float | None, gpus: float | None) -> str | None:
    """Why this machine (``cpus``, ``gpus``; None: not this machine) cannot run the space's
    trials, in words; None when it can."""
    from maxup.platform.space import check_resources

    if cpus is None:
        return None
    try:
        check_resources(spec, trials, cpus, gpus)
    except ConfigError as exc:
        return f"{exc.field} is {exc.value:g}; this machine has {cpus:g} CPU and {gpus:g} GPU"
    return None


def plan_and_price(spec, trials, statuses: dict, finished, cpus: float | None,
                   gpus: float | None, *, needs_cluster: str | None = None,
                   plan_for: str | None = None, address: str | None = None
                   ) -> tuple[Priced, bool] | None:
    """The one pricing of a sweep, shared by ``maxup sweep --dry-run`` and ``maxup status``.

    Where it is planned: ``plan_for`` (a cluster-launcher file); else, with ``address``, the
    live cluster's alive nodes as its GCS lists them (:func:`live_target`; nothing is joined
    or started); else, when that cluster cannot be read or holds no trial now, or this machine
    cannot run the space (``needs_cluster``), ``./cluster.yaml`` or the repository's, its
    description saying why the live cluster was not priced; else this machine (``cpus``,
    ``gpus``).

    Returns:
        (the priced plan, whether it is planned for this machine), or None when it needs a
        cluster and no cluster file is at hand.
    """
    from maxup.platform.space import REPO_ROOT

    unpriced_live = None
    if plan_for is None and address:
        target, unpriced_live = _live(address, spec, trials)
        if target is not None:
            return price(spec, trials, target, statuses, finished), False
    if plan_for is None and (address or needs_cluster):
        default = Path("cluster.yaml") if Path("cluster.yaml").is_file() \
            else REPO_ROOT / "cluster.yaml"
        if not default.is_file():
            return None
        plan_for = str(default)
    if plan_for is not None:
        target = cluster_target(plan_for, spec, trials)
        if unpriced_live:
            target.description += f"; not the cluster at --address: {unpriced_live}"
    else:
        target = local_target(spec, trials, cpus, gpus or 0.0)
    return price(spec, trials, target, statuses, finished), plan_for is None


def _live(address: str, spec, trials) -> tuple[Target | None, str | None]:
    """(the live cluster's target, None), or (None, why it cannot be priced) — read from its
    GCS only (:func:`maxup.platform.distributed.live_nodes`): a dry run joins nothing."""
    from maxup.platform.distributed import live_nodes
    from maxup.platform.space import trial_cpus

    try:
        hostport, nodes = live_nodes(address)
    except UsageError as exc:  # what the real run would refuse with, without its advice
        return None, str(exc).split("; allowed:", 1)[0]
    target = live_target(hostport, nodes, spec, trials)
    if target is None:
        need = (f"{max(trial_cpus(spec, t.config) for t in trials):g} CPU and "
                f"{spec.gpus_per_trial:g} GPU per trial")
        return None, (f"none of its {len(nodes)} alive node(s) at {hostport} holds a trial "
                      f"({need}) now")
    return target, None


def cost_line(spec, trials, priced: Priced) -> str:
    """``cost: N trial(s) to train, H GPU-hours (…), wall-clock W on S slot(s); …``: the one
    cost figure the dry run and ``maxup status`` print."""
    unit = "GPU" if spec.gpus_per_trial > 0 else "CPU"
    per = spec.gpus_per_trial if unit == "GPU" else priced.cpus_per_trial
    n_todo = sum(priced.pending)
    hours = priced.compute_s * per / 3600
    unknown = f" ({priced.unpriced} trial(s) not priced)" if priced.unpriced else ""
    if n_todo and priced.unpriced == n_todo:
        return (f"cost: {n_todo} trial(s) to train, none priced (see the notes); "
                f"{len(trials) - n_todo} already completed cost nothing")
    return (f"cost: {n_todo} trial(s) to train, {hours:.3g} {unit}-hours "
            f"({cost.fmt_duration(priced.compute_s)} of trial time × {per:g} {unit}), "
            f"wall-clock {cost.fmt_duration(priced.wall_s)} on {len(priced.target.slots)} "
            f"slot(s){unknown}; {len(trials) - n_todo} already completed cost nothing")


def arm_lines(spec, priced: Priced) -> list[str]:
    """One line per arm, in submission order: estimated time per trial, trials to train."""
    from maxup import identity

    axes = [a for a in spec.varying_axes() if a != "seed"]
    rows: dict[str, list] = {}
    for t, todo, sec in zip(priced.trials, priced.pending, priced.seconds, strict=True):
        row = rows.setdefault(identity.arm_id(t.config), [t, sec, 0, 0])
        row[2 if todo else 3] += 1
    out = []
    for t, sec, todo, done in rows.values():
        label = ", ".join(f"{a}={t.axes[a]}" for a in axes) or "(single arm)"
        extra = f", {done} already done" if done else ""
        out.append(f"{cost.fmt_duration(sec):>9} × {todo} to train{extra}  {label}")
    return out


def run_estimates(spec, trials, finished, *, remote: bool) -> dict[str, float | None]:
    """Estimated seconds per trial for ordering and the ETA of a sweep about to run.

    Priced on this machine's device (a local run) or on the fallback profile of the trials'
    device kind (a cluster: its nodes' device is not known here), refined by ``finished``:
    the records of these trials the sweep already read from its storage.
    """
    gpu = spec.gpus_per_trial > 0
    if remote:
        name, kind = ("cluster GPU", "gpu") if gpu else ("cluster CPU", "cpu")
    else:
        name, kind = cost.local_device(want_gpu=gpu)
    prof, _note = cost.find_profile(name, kind)
    share = cost.trials_sharing(spec.gpus_per_trial, spec.concurrency)
    factors = cost.refinement(list(finished), prof, name, share)
    out: dict[str, float | None] = {}
    facts: dict[tuple, object] = {}
    for t in trials:
        key = (t.config["data"]["name"], t.config["data"].get("subset"))
        if key not in facts:
            facts[key] = cost.data_facts(t.config)
        est = cost.estimate(t.config, prof, facts[key], share=share)
        out[t.trial_id] = cost.refined(est, t.config, factors, prof.trial_overhead_s).seconds
    return out
