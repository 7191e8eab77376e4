"""What a sweep will cost: device profiles, per-trial estimates, and the schedule on slots.

The model (issue 14). One trial costs::

    overhead + Σ_epochs [ steps × t_step(B, m_epoch) + test_n × t_fwd_img ]

with ``steps = ceil((train_n // workers) / (B // workers))`` (the engine's shard and batch
rule), ``t_step(B, m) = B × (t_step_img + (m if m > 1 else 0) × t_fwd_img)`` (a MaxUp step is
about m no-grad forwards plus one training step: the bound BENCHMARKS.md measures), warm-up
epochs at m = 1, and per-image times from a **device profile** scaled linearly in the number
of pixels when the profile was measured at another input size.

**Trials sharing a GPU** (fractional ``resources.gpus_per_trial``, issue 25): ``n =
floor(1 / gpus_per_trial)`` trials share one GPU, at most the number of slots that run at once
(:func:`trials_sharing`). Processes on one GPU are time-sliced, so n together are not n times
as fast as one: a profile's ``packing`` holds the measured **packing factor** f(n) =
throughput of n trials together ÷ one alone (``maxup calibrate --pack N``), and each trial's
compute (its epochs; the fixed per-trial overhead is not scaled) takes ``alone × n ÷ f(n)``.
Without f(n) for the device, the factor measured at the largest n' < n is used (no further
gain assumed), else 1 — no gain from sharing, never perfect scaling — and the estimate's note
says which (:func:`packing_factor`). Each trial is priced at the full n, also the last ones of
a sweep that may run with fewer neighbours (an upper bound there).

A device profile (schema ``maxup.profile/1``) is a small JSON file keyed by device name that
``maxup calibrate`` writes: per model and input shape, the measured no-grad forward and
training step of one batch. Shipped profiles (``maxup/platform/profiles/``) state where their
figures come from (``source``; ``estimate: true`` when nothing was measured). Profiles the
user calibrated (``$MAXUP_PROFILES``, default ``~/.config/maxup/profiles``) win over shipped
ones for the same device. Finished records refine the estimate: their measured epoch times
over the model's prediction give a correction factor per model (:func:`refinement`).

This module imports neither torch nor Ray; dataset facts come from ``maxup.data`` (torch) only
when a trial is priced.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from maxup.errors import ProfileError
from maxup.records import cpu_name
from maxup.schedule import copies_at

PROFILE_SCHEMA = "maxup.profile/1"
SHIPPED_DIR = Path(__file__).resolve().parent / "profiles"
KINDS = ("cpu", "gpu")


# --------------------------------------------------------------------------- profiles

@dataclass(frozen=True)
class Timing:
    """One model at one input shape: a batch's no-grad forward and training step (seconds)."""

    batch: int
    fwd_s: float
    step_s: float
    basis: str | None = None  # how a figure not measured on this device was derived

    @property
    def fwd_img(self) -> float:
        return self.fwd_s / self.batch

    @property
    def step_img(self) -> float:
        return self.step_s / self.batch


@dataclass
class Packing:
    """n trials on one device: throughput together ÷ one alone, and where it was measured.

    ``models`` holds the factor per ``"<model>@CxHxW"`` when ``maxup calibrate --pack``
    measured it per model; ``factor`` is the device's figure for other models (the smallest
    of those measured, or a measurement whose model was not recorded).
    """

    factor: float
    source: str
    models: dict[str, float] = field(default_factory=dict)

    def for_model(self, key: str | None) -> float:
        return self.models.get(key, self.factor) if key else self.factor


@dataclass
class Profile:
    """A device's timings (``models``: ``"<model>@CxHxW"`` → :class:`Timing`)."""

    device: str
    kind: str
    source: str
    estimate: bool
    models: dict[str, Timing] = field(default_factory=dict)
    trial_overhead_s: float = 0.0
    default_for: str | None = None  # "cpu"/"gpu": the shipped fallback of that kind
    created: str | None = None
    path: str | None = None
    packing: dict[int, Packing] = field(default_factory=dict)  # trials per device → factor

    def to_dict(self) -> dict:
        doc = {
            "schema": PROFILE_SCHEMA, "device": self.device, "kind": self.kind,
            "source": self.source, "estimate": self.estimate, "default_for": self.default_for,
            "created": self.created, "trial_overhead_s": self.trial_overhead_s,
            "models": {k: {"batch": t.batch, "fwd_s": t.fwd_s, "step_s": t.step_s,
                           **({"basis": t.basis} if t.basis else {})}
                       for k, t in sorted(self.models.items())},
        }
        if self.packing:
            doc["packing"] = {str(n): {"factor": p.factor, "source": p.source,
                                       **({"models": dict(sorted(p.models.items()))}
                                          if p.models else {})}
                              for n, p in sorted(self.packing.items())}
        return doc

    def timing(self, model: str, shape: tuple[int, int, int]) -> tuple[Timing, float] | None:
        """(timing, pixel scale) for ``model`` at ``shape``; None when the model is absent.

        An exact shape is used as is (scale 1); otherwise the entry with the closest pixel
        count is scaled by (C·H·W wanted) ÷ (C·H·W measured).
        """
        exact = self.models.get(shape_key(model, shape))
        if exact is not None:
            return exact, 1.0
        want = math.prod(shape)
        others = [(k, t) for k, t in self.models.items() if k.split("@", 1)[0] == model]
        if not others:
            return None
        key, t = min(others, key=lambda kt: abs(math.log(math.prod(_shape_of(kt[0])) / want)))
        return t, want / math.prod(_shape_of(key))


def shape_key(model: str, shape: tuple[int, int, int]) -> str:
    """The profile key of a model at an input shape: ``resnet110@3x32x32``."""
    return f"{model}@{'x'.join(str(int(s)) for s in shape)}"


def _shape_of(key: str) -> tuple[int, ...]:
    return tuple(int(s) for s in key.split("@", 1)[1].split("x"))


def device_slug(device: str) -> str:
    """File-name form of a device name (``NVIDIA A10G`` → ``nvidia-a10g``)."""
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") or "device"


def parse_profile(data: dict, where: str) -> Profile:
    """Validate a profile document; any bad field is a one-line :class:`ProfileError`.

    Args:
        data: the parsed JSON.
        where: the file (for the message).
    """
    def bad(fld: str, value, allowed: str):
        return ProfileError(f"profile {where}: {fld}: got {value!r}; allowed: {allowed}")

    if not isinstance(data, dict):
        raise bad("(top level)", type(data).__name__, "a JSON object")
    schema = data.get("schema")
    if not isinstance(schema, str) or schema.split("/")[0] != "maxup.profile" or \
            schema.split("/")[-1].split(".")[0] != "1":
        raise bad("schema", schema, f"{PROFILE_SCHEMA!r}")
    device = data.get("device")
    if not isinstance(device, str) or not device:
        raise bad("device", device, "a non-empty device name")
    kind = data.get("kind")
    if kind not in KINDS:
        raise bad("kind", kind, "one of " + ", ".join(KINDS))
    source = data.get("source")
    if not isinstance(source, str) or not source:
        raise bad("source", source, "a non-empty statement of where the figures come from")
    overhead = data.get("trial_overhead_s", 0.0)
    if not _number(overhead) or overhead < 0:
        raise bad("trial_overhead_s", overhead, "a number >= 0")
    default_for = data.get("default_for")
    if default_for not in (None, *KINDS):
        raise bad("default_for", default_for, "null, cpu or gpu")
    models = data.get("models")
    if not isinstance(models, dict):
        raise bad("models", models, "an object of '<model>@CxHxW' -> {batch, fwd_s, step_s}")
    out: dict[str, Timing] = {}
    for key, entry in models.items():
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+@\d+x\d+x\d+", str(key)):
            raise bad(f"models.{key}", key, "a key '<model>@CxHxW'")
        if not isinstance(entry, dict):
            raise bad(f"models.{key}", entry, "{batch, fwd_s, step_s}")
        batch, fwd, step = entry.get("batch"), entry.get("fwd_s"), entry.get("step_s")
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise bad(f"models.{key}.batch", batch, "an int >= 1")
        for name, v in (("fwd_s", fwd), ("step_s", step)):
            if not _number(v) or not v > 0:
                raise bad(f"models.{key}.{name}", v, "a number > 0 (seconds per batch)")
        basis = entry.get("basis")
        if basis is not None and (not isinstance(basis, str) or not basis):
            raise bad(f"models.{key}.basis", basis, "a non-empty statement, or absent")
        out[key] = Timing(batch, float(fwd), float(step), basis)
    return Profile(device=device, kind=kind, source=source,
                   estimate=bool(data.get("estimate", False)), models=out,
                   trial_overhead_s=float(overhead), default_for=default_for,
                   created=data.get("created"), path=where,
                   packing=_parse_packing(data.get("packing", {}), bad))


def _parse_packing(packing, bad) -> dict[int, Packing]:
    """The optional ``packing`` object: ``{"<n>": {"factor", "source", "models"?}}``."""
    if not isinstance(packing, dict):
        raise bad("packing", packing, "an object of '<trials per device>' -> {factor, source}")
    out: dict[int, Packing] = {}
    for n_text, entry in packing.items():
        where = f"packing.{n_text}"
        if not re.fullmatch(r"[0-9]+", str(n_text)) or int(n_text) < 2:
            raise bad(where, n_text, "a key that is an int >= 2 (trials sharing the device)")
        if not isinstance(entry, dict):
            raise bad(where, entry, "{factor, source}")
        factor, source, models = entry.get("factor"), entry.get("source"), entry.get("models", {})
        if not _number(factor) or not factor > 0:
            raise bad(f"{where}.factor", factor, "a number > 0 (throughput of the trials "
                      "together ÷ one alone)")
        if not isinstance(source, str) or not source:
            raise bad(f"{where}.source", source, "a non-empty statement of the measurement")
        if not isinstance(models, dict):
            raise bad(f"{where}.models", models, "an object of '<model>@CxHxW' -> factor")
        for key, f in models.items():
            if not _number(f) or not f > 0:
                raise bad(f"{where}.models.{key}", f, "a number > 0")
        out[int(n_text)] = Packing(float(factor), source, {k: float(f) for k, f in
                                                          models.items()})
    return out


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def load_profile(path: str | Path) -> Profile:
    """Read and validate one profile file (ProfileError when unreadable or invalid)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ProfileError(f"profile {path}: cannot be read ({exc.strerror})") from None
    except ValueError as exc:
        raise ProfileError(f"profile {path}: not valid JSON ({exc})") from None
    return parse_profile(data, str(path))


def user_profiles_dir() -> Path:
    """Where ``maxup calibrate`` writes and the planner looks first (``$MAXUP_PROFILES``)."""
    return Path(os.environ.get("MAXUP_PROFILES")
                or Path.home() / ".config" / "maxup" / "profiles")


def profile_dirs() -> list[Path]:
    return [user_profiles_dir(), SHIPPED_DIR]


def find_profile(device: str, kind: str, dirs: Iterable[Path] | None = None
                 ) -> tuple[Profile, str | None]:
    """The profile for ``device``, or the shipped default of its kind, and a note saying so.

    Args:
        device: device name (``NVIDIA A10G``, ``Intel(R) Xeon(R) Processor``).
        kind: ``cpu`` or ``gpu`` (picks the fallback).
        dirs: folders to search, first match wins (default :func:`profile_dirs`).

    Returns:
        ``(profile, note)``; ``note`` is None when the device's own profile was found, else
        one line naming the fallback and its source.
    """
    dirs = list(profile_dirs() if dirs is None else dirs)
    slug = device_slug(device)
    for d in dirs:
        p = d / f"{slug}.json"
        if p.is_file():
            return load_profile(p), None
    for d in dirs:
        for p in sorted(d.glob("*.json")) if d.is_dir() else []:
            prof = load_profile(p)
            if prof.default_for == kind:
                return prof, (f"no profile for {device!r} (run `maxup calibrate` on it); using "
                              f"{prof.device!r} from {p.name}: {prof.source}")
    raise ProfileError(f"no profile for {device!r} and no default {kind} profile in "
                       + ", ".join(map(str, dirs)))


def local_gpu_count() -> float:
    """CUDA devices visible to this process (what an embedded local Ray sees).

    Without an NVIDIA driver (no ``/proc/driver/nvidia`` on Linux) or with
    ``CUDA_VISIBLE_DEVICES`` empty, 0 without importing torch (seconds on a busy machine,
    before a command's first line); otherwise torch counts them."""
    import sys

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0.0
    if sys.platform.startswith("linux") and not os.path.isdir("/proc/driver/nvidia"):
        return 0.0
    import torch

    return float(torch.cuda.device_count())


def local_device(want_gpu: bool = False) -> tuple[str, str]:
    """(name, kind) of this machine's device: the first CUDA GPU, else the CPU model."""
    if want_gpu:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0), "gpu"
    return cpu_name(), "cpu"


# --------------------------------------------------------------------------- per trial

@dataclass
class Estimate:
    """One trial's estimated cost on one device (seconds; None when it cannot be priced)."""

    seconds: float | None
    epoch_s: float | None = None
    note: str | None = None


def data_facts(config: dict) -> tuple[int, int, tuple[int, int, int]] | None:
    """(train images, test images, (C, H, W)) of a config's dataset; None when unknown."""
    from maxup.data import dataset_info

    info = dataset_info(config["data"]["name"])
    if getattr(info, "kind", "image") != "image":
        return None
    train_n = config["data"].get("subset") or info.train_size
    if train_n is None or info.test_size is None:
        return None
    if info.train_size is not None:
        train_n = min(train_n, info.train_size)
    return int(train_n), int(info.test_size), (info.in_channels, *info.image_size)


def epoch_seconds(config: dict, timing: Timing, scale: float, train_n: int, test_n: int,
                  m: int) -> float:
    """Seconds of one epoch at ``m`` copies (see the module docstring)."""
    workers = max(1, int(config["train"]["workers"]))
    batch = max(1, int(config["train"]["batch_size"]) // workers)
    steps = math.ceil((train_n // workers) / batch)
    per_img = timing.step_img + (m if m > 1 else 0) * timing.fwd_img
    return scale * (steps * batch * per_img + math.ceil(test_n / workers) * timing.fwd_img)


def trials_sharing(gpus_per_trial: float, slots: int | None = None) -> int:
    """How many trials share one GPU: ``floor(1 / gpus_per_trial)``, at most ``slots``.

    1 for whole GPUs (``gpus_per_trial`` >= 1) and CPU trials (0). ``slots`` is how many
    trials run at once (a space's ``concurrency``, the planned target's slots): 0.25 GPU per
    trial with only 2 at a time puts 2, not 4, on the GPU.
    """
    g = float(gpus_per_trial)
    if not g > 0 or g >= 1:
        return 1
    n = int(math.floor(1.0 / g + 1e-9))
    return max(1, min(n, int(slots))) if slots is not None else max(1, n)


def packing_factor(profile: Profile, n: int, model_key: str | None = None
                   ) -> tuple[float, str | None]:
    """(f(n), note): throughput of ``n`` trials sharing ``profile``'s device ÷ one alone.

    The profile's factor at ``n`` (the model's own when measured per model); else the one
    measured at the largest n' < n (no further gain assumed); else 1 (no gain from sharing).
    The note (None for n = 1) says which, and where the factor comes from.
    """
    if n <= 1:
        return 1.0, None
    if n in profile.packing:
        p = profile.packing[n]
        f = p.for_model(model_key)
        return f, (f"{n} trials share each GPU: each takes ×{n} ÷ packing factor {f:.3g} "
                   f"= ×{n / f:.3g} ({p.source})")
    below = [k for k in profile.packing if k < n]
    if below:
        k = max(below)
        f = profile.packing[k].for_model(model_key)
        return f, (f"{n} trials share each GPU: packing factor at {n} not measured on "
                   f"{profile.device!r}; assumed no gain beyond the {f:.3g} measured with {k} "
                   f"(each trial ×{n / f:.3g}; `maxup calibrate --pack {n}` measures it)")
    return 1.0, (f"{n} trials share each GPU: no packing factor measured on "
                 f"{profile.device!r}; assumed no throughput gain from sharing (each trial "
                 f"×{n}, not perfect scaling; `maxup calibrate --pack {n}` measures it)")


def estimate(config: dict, profile: Profile, facts=None, *, share: int = 1) -> Estimate:
    """The estimated cost of one trial on ``profile``'s device.

    Args:
        config: resolved run config.
        profile: the device profile.
        facts: :func:`data_facts` of the config when the caller has them.
        share: trials sharing the device (:func:`trials_sharing`); their compute is priced
            with the profile's packing factor (:func:`packing_factor`).
    """
    facts = data_facts(config) if facts is None else facts
    if facts is None:
        return Estimate(None, note=f"dataset {config['data']['name']!r} is not priced")
    train_n, test_n, shape = facts
    model = config["model"]["name"]
    found = profile.timing(model, shape)
    if found is None:
        return Estimate(None, note=f"no figures for {model} in the {profile.device!r} profile "
                                   "(run `maxup calibrate` for it)")
    timing, scale = found
    factor, pack_note = packing_factor(profile, share, shape_key(model, shape))
    slow = share / factor
    copies = _copies_per_epoch(config, range(config["train"]["epochs"]))
    main_s = slow * epoch_seconds(config, timing, scale, train_n, test_n, config["maxup"]["m"])
    total = profile.trial_overhead_s + slow * sum(
        epoch_seconds(config, timing, scale, train_n, test_n, c) for c in copies)
    notes = [] if scale == 1.0 else [f"{model} scaled ×{scale:.3g} from another input size"]
    notes += [pack_note] if pack_note else []
    return Estimate(total, main_s, "; ".join(notes) or None)


def predicted_epochs(config: dict, profile: Profile, epochs: Iterable[int], share: int = 1
                     ) -> float | None:
    """Predicted seconds of the listed (1-based) epochs of a config, overhead excluded, with
    ``share`` trials on the device (:func:`estimate`)."""
    facts = data_facts(config)
    if facts is None:
        return None
    train_n, test_n, shape = facts
    model = config["model"]["name"]
    found = profile.timing(model, shape)
    if found is None:
        return None
    timing, scale = found
    factor, _ = packing_factor(profile, share, shape_key(model, shape))
    copies = _copies_per_epoch(config, (e - 1 for e in epochs))
    return share / factor * sum(epoch_seconds(config, timing, scale, train_n, test_n, c)
                                for c in copies)


def _copies_per_epoch(config: dict, epochs: Iterable[int]) -> list[int]:
    """MaxUp copies of each listed 0-based epoch (the engine's warm-up rule)."""
    m, warm = config["maxup"]["m"], config["maxup"]["warmup_epochs"]
    return [copies_at(e, m=m, warmup_epochs=warm) for e in epochs]


def refinement(history_records, profile: Profile, device: str | None = None,
               share: int = 1) -> dict[str, float]:
    """Correction factors from finished work: model name → Σ measured ÷ Σ predicted.

    Only records trained on the target device count (``environment.device_name``); each
    contributes the epochs it finished (``history[*].wall_s``). ``"*"`` is the factor over all
    models, for models without their own. With a fallback profile (another device's figures),
    the target device's own records correct it.

    Args:
        history_records: :class:`maxup.records.TrialRecord` objects (any status).
        profile: the profile the estimates come from.
        device: the device planned for (default: the profile's).
        share: trials sharing a device in the plan; the records are predicted as run that
            way too, so a packed sweep's records do not count the sharing twice.
    """
    device = device or profile.device
    measured: dict[str, float] = {}
    predicted: dict[str, float] = {}
    for rec in history_records:
        if (rec.environment or {}).get("device_name") != device or not rec.history:
            continue
        rows = [h for h in rec.history if _number(h.get("wall_s"))]
        pred = predicted_epochs(rec.config, profile, [h["epoch"] for h in rows], share)
        if not pred:
            continue
        model = rec.config["model"]["name"]
        for key in (model, "*"):
            measured[key] = measured.get(key, 0.0) + sum(h["wall_s"] for h in rows)
            predicted[key] = predicted.get(key, 0.0) + pred
    return {k: measured[k] / predicted[k] for k in measured if predicted[k] > 0}


def refined(est: Estimate, config: dict, factors: dict[str, float],
            overhead_s: float) -> Estimate:
    """An estimate scaled by the model's (else the overall) correction factor."""
    f = factors.get(config["model"]["name"], factors.get("*"))
    if est.seconds is None or f is None:
        return est
    return Estimate(overhead_s + (est.seconds - overhead_s) * f,
                    None if est.epoch_s is None else est.epoch_s * f,
                    f"refined ×{f:.2f} from finished trials")


# --------------------------------------------------------------------------- scheduling

@dataclass
class Placed:
    """Where and when a trial runs in a simulated schedule (seconds from the start)."""

    index: int
    slot: int
    start: float
    end: float


def schedule(durations: list[list[float]] | list[float], slots: int | None = None,
             busy_until: list[float] | None = None) -> list[Placed]:
    """List-schedule trials, in the given order, on the slot that frees first.

    Args:
        durations: per trial, either one duration (same on every slot) or one per slot.
        slots: number of slots (required when durations are scalars and ``busy_until`` is
            None).
        busy_until: when each slot becomes free (running trials); default all free at 0.

    Returns:
        One :class:`Placed` per trial, in the input order.
    """
    free = list(busy_until) if busy_until is not None else [0.0] * int(slots or 0)
    if not free:
        raise ValueError("schedule needs at least one slot")
    out = []
    for i, d in enumerate(durations):
        s = min(range(len(free)), key=lambda k: (free[k], k))
        dur = d[s] if isinstance(d, list | tuple) else d
        out.append(Placed(i, s, free[s], free[s] + dur))
        free[s] += dur
    return out


def longest_first(keys: list, costs: list[float | None], arms: list[str]) -> list[int]:
    """Indices of trials in submission order: decreasing cost; ties spread over arms.

    Trials whose cost is unknown go last in their given order. Among trials of equal cost,
    each arm's first trial comes before any arm's second (the given order decides within a
    rank), so partial tables fill evenly.

    Args:
        keys: the trials (only their count and order matter).
        costs: estimated cost per trial (None: unknown).
        arms: arm id per trial.
    """
    rank: dict[int, int] = {}
    seen: dict[tuple, int] = {}
    for i in range(len(keys)):
        k = (costs[i], arms[i])
        rank[i] = seen.get(k, 0)
        seen[k] = rank[i] + 1
    known = [i for i in range(len(keys)) if costs[i] is not None]
    unknown = [i for i in range(len(keys)) if costs[i] is None]
    known.sort(key=lambda i: (-round(costs[i], 6), rank[i], i))
    return known + unknown


def fmt_duration(seconds: float | None) -> str:
    """``45 s``, ``12.5 min``, ``3.2 h`` (``?`` when unknown)."""
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 3 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def remaining_wall(running_left: list[float], pending: list[float], slots: int) -> float:
    """Seconds until a sweep ends: running trials' remaining times occupy their slots, the
    pending ones are list-scheduled after them (in the given order).

    Args:
        running_left: estimated seconds left of each running trial.
        pending: estimated seconds of each pending trial, in submission order.
        slots: trials at a time.
    """
    free = sorted(running_left)[:slots] + [0.0] * max(0, slots - len(running_left))
    if not pending:
        return max(free, default=0.0)
    placed = schedule(list(pending), busy_until=free)
    return max(max(p.end for p in placed), max(free))
