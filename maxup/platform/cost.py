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

**Language models** (AWD-LSTM on a word-level corpus) are priced by tokens and FLOPs, since a
profile's per-image times do not apply::

    overhead + Σ_epochs [ train_tokens × (3 + (m if m > 1 else 0)) × f ÷ R_train
                          + (valid_tokens + test_tokens) × f ÷ R_eval ]  (+ dynamic evaluation)

with ``f`` the forward FLOPs of one token (:func:`lm_forward_flops`: the LSTMs' and the tied
decoder's multiply-adds, so the model's size), a training step three forwards (forward and
backward) plus m no-grad selection forwards when m > 1 (the image rule), the tokens those of
the corpus (:data:`LM_TOKENS`, ``data.subset``) read as the task batchifies them, and ``R`` a
device's effective FLOP/s for AWD-LSTM — the profile's ``lm`` entry (:class:`LMRates`, with
its ``basis``: the CPU's from the stored ``reproduction/lm_kjv`` records, the GPUs' from
awd-lstm-lm's published GP100 epoch time by memory bandwidth), else the shipped one of the
device or its kind. The test split is evaluated when validation improves, priced in every
epoch (an upper bound). Finished LM records refine it like any other (:func:`refinement`).

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


@dataclass(frozen=True)
class LMRates:
    """A device's effective FLOP/s for AWD-LSTM (FLOPs as :func:`lm_forward_flops` counts):
    its training steps and its no-grad evaluation, and where the figures come from."""

    train_flop_s: float
    eval_flop_s: float
    basis: str

    def to_dict(self) -> dict:
        return {"train_flop_s": self.train_flop_s, "eval_flop_s": self.eval_flop_s,
                "basis": self.basis}


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
    lm: LMRates | None = None  # language models (AWD-LSTM), priced by FLOPs

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
        if self.lm is not None:
            doc["lm"] = self.lm.to_dict()
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
                   packing=_parse_packing(data.get("packing", {}), bad),
                   lm=_parse_lm(data.get("lm"), bad))


def _parse_lm(lm, bad) -> LMRates | None:
    """The optional ``lm`` object: ``{train_flop_s, eval_flop_s, basis}``."""
    if lm is None:
        return None
    if not isinstance(lm, dict):
        raise bad("lm", lm, "an object {train_flop_s, eval_flop_s, basis}")
    for name in ("train_flop_s", "eval_flop_s"):
        if not _number(lm.get(name)) or not lm[name] > 0:
            raise bad(f"lm.{name}", lm.get(name), "a number > 0 (FLOP/s)")
    if not isinstance(lm.get("basis"), str) or not lm["basis"]:
        raise bad("lm.basis", lm.get("basis"), "a non-empty statement of the figures' source")
    return LMRates(float(lm["train_flop_s"]), float(lm["eval_flop_s"]), lm["basis"])


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
    if is_language_model(config):
        return lm_estimate(config, profile, share=share)
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
    if is_language_model(config):
        return lm_predicted_epochs(config, profile, epochs, share)
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


# --------------------------------------------------------------------------- language models

#: Tokens (train, valid, test) of each word-level corpus and version as ``maxup.data.corpus``
#: reads it: words plus one ``<eos>`` per line. PTB (887,521 words in 42,068 lines of
#: ptb.train.txt, 70,390 in 3,370, 78,669 in 3,761) and WikiText-2 (2,051,910 words in 36,718
#: lines, 213,886 in 3,760, 241,211 in 4,358) as awd-lstm-lm's data.py counts them; the KJV
#: as built from Debian's bible-kjv (docs/lm.md, "Measured here").
LM_TOKENS: dict[tuple[str, int], tuple[int, int, int]] = {
    ("ptb", 1): (929_589, 73_760, 82_430),
    ("wikitext2", 1): (2_088_628, 217_646, 245_569),
    ("kjv", 1): (748_366, 35_251, 38_935),
    ("kjv", 2): (743_332, 39_176, 40_044),
}


def is_language_model(config: dict) -> bool:
    """Whether a config trains a language model (a text dataset)."""
    from maxup.data import dataset_info

    return getattr(dataset_info(config["data"]["name"]), "kind", "image") == "text"


def lm_forward_flops(lm: dict, vocab: int) -> float:
    """FLOPs of one token's forward through AWD-LSTM: twice the multiply-adds of each LSTM
    (4·H_out·(H_in + H_out): its input and recurrent matrices) and of the tied decoder (E·V).

    Args:
        lm: the config's ``lm`` section (``emsize``, ``nhid``, ``nlayers``).
        vocab: the corpus's vocabulary size V.
    """
    e, h, n = int(lm["emsize"]), int(lm["nhid"]), int(lm["nlayers"])
    sizes = [e] + [h] * (n - 1) + [e]
    macs = sum(4 * out * (inp + out) for inp, out in zip(sizes, sizes[1:])) + e * vocab
    return 2.0 * macs


def lm_tokens(config: dict) -> tuple[int, int, int] | None:
    """(train, valid, test) tokens of a config's corpus (``data.subset`` of the training
    split; the corpus version in ``data.version``, 1 without it); None when unknown."""
    name = config["data"]["name"]
    known = LM_TOKENS.get((name, int(config["data"].get("version") or 1)))
    if known is None:
        return None
    train, valid, test = known
    subset = config["data"].get("subset")
    return (min(train, int(subset)) if subset else train), valid, test


def batchified_tokens(tokens: int, columns: int) -> int:
    """Tokens a pass predicts over a split of ``tokens`` batchified into ``columns`` (the
    remainder is dropped, and the last row is only a target)."""
    return max(tokens // max(1, columns) - 1, 0) * max(1, columns)


def lm_epoch_flops(config: dict, tokens: tuple[int, int, int], m: int, *,
                   last: bool = False) -> tuple[float, float]:
    """(training FLOPs, evaluation FLOPs) of one LM epoch at ``m`` copies (module docstring).

    Args:
        config: resolved run config.
        tokens: :func:`lm_tokens`.
        m: MaxUp copies in this epoch.
        last: the trial's last epoch, which adds dynamic evaluation when ``lm.dyneval``.
    """
    from maxup.data import dataset_info

    lm = config["lm"]
    f = lm_forward_flops(lm, dataset_info(config["data"]["name"]).num_classes)
    train_n, valid_n, test_n = tokens
    trained = batchified_tokens(train_n, int(config["train"]["batch_size"]))
    train = trained * (3 + (m if m > 1 else 0)) * f
    evaluated = (batchified_tokens(valid_n, int(lm["eval_batch_size"]))
                 + batchified_tokens(test_n, int(lm["test_batch_size"])))
    if last and lm.get("dyneval"):
        evaluated += 3 * _dyneval_tokens(config, tokens)  # forward, backward and update
    return train, evaluated * f


def _dyneval_tokens(config: dict, tokens: tuple[int, int, int]) -> int:
    """Tokens dynamic evaluation reads: gradient statistics over the whole training split (or
    ``dyneval_batches`` windows), validation and test, and each point of a grid search."""
    from maxup.lm.dyneval import GRID_LAMB, GRID_LR, GRIDFAST_TOKENS

    lm = config["lm"]
    name, version = config["data"]["name"], int(config["data"].get("version") or 1)
    full_train, valid_n, test_n = LM_TOKENS.get((name, version), tokens)
    stats = batchified_tokens(full_train, int(lm.get("dyneval_batch_size", 100)))
    if lm.get("dyneval_batches"):
        stats = min(stats, int(lm["dyneval_batches"]) * int(lm.get("dyneval_bptt", 5))
                    * int(lm.get("dyneval_batch_size", 100)))
    n = stats + batchified_tokens(valid_n, 1) + batchified_tokens(test_n, 1)
    search = lm.get("dyneval_search", "off")
    if search != "off":
        grid_n = min(valid_n, GRIDFAST_TOKENS) if search == "gridfast" else valid_n
        n += len(GRID_LR) * len(GRID_LAMB) * batchified_tokens(grid_n, 1)
    return n


def lm_rates(profile: Profile) -> tuple[LMRates | None, str | None]:
    """(the AWD-LSTM rates for ``profile``'s device, a note when they come from elsewhere):
    the profile's own ``lm``, else the shipped profile's of that device, else the shipped
    default's of its kind (a profile ``maxup calibrate`` wrote has none)."""
    if profile.lm is not None:
        return profile.lm, None
    shipped = SHIPPED_DIR / f"{device_slug(profile.device)}.json"
    candidates = [shipped] if shipped.is_file() else []
    candidates += [p for p in sorted(SHIPPED_DIR.glob("*.json")) if p != shipped]
    for path in candidates:
        prof = load_profile(path)
        if prof.lm is not None and (path == shipped or prof.default_for == profile.kind):
            return prof.lm, (f"no language-model figures for {profile.device!r} in "
                             f"{profile.path or 'its profile'}; using {prof.device!r}'s "
                             f"from {path.name}")
    return None, None


def lm_rates_from_records(records) -> tuple[float, float, int]:
    """(training FLOP/s, evaluation FLOP/s, epochs) measured by finished LM records: Σ FLOPs
    of their epochs ÷ Σ their ``train_s`` and ``eval_s`` (the test split counted in the
    epochs whose validation improved, when the task evaluates it). Each record's corpus is
    the one its ``environment.corpus`` states.

    Args:
        records: :class:`maxup.records.TrialRecord` objects or their dicts.
    """
    flops = [0.0, 0.0]
    seconds = [0.0, 0.0]
    epochs = 0
    for rec in records:
        rec = rec if isinstance(rec, dict) else rec.to_dict()
        corpus = (rec.get("environment") or {}).get("corpus") or {}
        split = corpus.get("tokens") or {}
        if not is_language_model(rec["config"]) or not split:
            continue
        full = (split["train"], split["valid"], split["test"])
        subset = rec["config"]["data"].get("subset")
        tokens = ((min(full[0], int(subset)) if subset else full[0]), full[1], full[2])
        last = int(rec["config"]["train"]["epochs"])
        for h in rec.get("history") or []:
            if not (_number(h.get("train_s")) and _number(h.get("eval_s"))):
                continue
            train, evaluated = lm_epoch_flops(rec["config"], tokens, int(h["maxup_m"]),
                                              last=h["epoch"] == last)
            if h.get("best_epoch") != h["epoch"]:  # the test split was not evaluated
                f = lm_forward_flops(rec["config"]["lm"], int(corpus["vocab_size"]))
                test_batch = int(rec["config"]["lm"]["test_batch_size"])
                evaluated -= batchified_tokens(full[2], test_batch) * f
            flops[0] += train
            flops[1] += evaluated
            seconds[0] += h["train_s"]
            seconds[1] += h["eval_s"]
            epochs += 1
    if not epochs or not all(seconds):
        return 0.0, 0.0, 0
    return flops[0] / seconds[0], flops[1] / seconds[1], epochs


def _lm_seconds(config: dict, tokens, rates: LMRates, epochs: Iterable[int]) -> float:
    """Seconds of the listed 0-based epochs of an LM config at ``rates`` (overhead excluded)."""
    total = 0.0
    last = int(config["train"]["epochs"]) - 1
    for e in epochs:
        m = _copies_per_epoch(config, [e])[0]
        train, evaluated = lm_epoch_flops(config, tokens, m, last=e == last)
        total += train / rates.train_flop_s + evaluated / rates.eval_flop_s
    return total


def lm_estimate(config: dict, profile: Profile, *, share: int = 1) -> Estimate:
    """The estimated cost of one language-model trial on ``profile``'s device (the module
    docstring's LM formula).

    Args:
        config: resolved run config of a text dataset.
        profile: the device profile (its ``lm`` rates, or the shipped ones).
        share: trials sharing the device (:func:`packing_factor`).
    """
    tokens = lm_tokens(config)
    if tokens is None:
        return Estimate(None, note=f"corpus {config['data']['name']!r} version "
                                   f"{config['data'].get('version') or 1} is not priced "
                                   "(its token counts are not in cost.LM_TOKENS)")
    rates, note = lm_rates(profile)
    if rates is None:
        return Estimate(None, note=f"no language-model figures for {profile.device!r} and "
                                   "none shipped for its kind")
    factor, pack_note = packing_factor(profile, share, config["model"]["name"])
    slow = share / factor
    epochs = int(config["train"]["epochs"])
    main_m = int(config["maxup"]["m"])
    train, evaluated = lm_epoch_flops(config, tokens, main_m)
    epoch_s = slow * (train / rates.train_flop_s + evaluated / rates.eval_flop_s)
    total = profile.trial_overhead_s + slow * _lm_seconds(config, tokens, rates, range(epochs))
    notes = [n for n in (note, pack_note) if n]
    return Estimate(total, epoch_s, "; ".join(notes) or None)


def lm_predicted_epochs(config: dict, profile: Profile, epochs: Iterable[int], share: int = 1
                        ) -> float | None:
    """:func:`predicted_epochs` of a language model (1-based ``epochs``)."""
    tokens = lm_tokens(config)
    rates, _ = lm_rates(profile)
    if tokens is None or rates is None:
        return None
    factor, _ = packing_factor(profile, share, config["model"]["name"])
    return share / factor * _lm_seconds(config, tokens, rates, (e - 1 for e in epochs))


def _flop_s(rate: float) -> str:
    return f"{rate / 1e12:.3g} TFLOP/s" if rate >= 1e12 else f"{rate / 1e9:.3g} GFLOP/s"


def lm_note(profile: Profile) -> str | None:
    """The line a plan prints about its language-model figures for ``profile``'s device."""
    rates, note = lm_rates(profile)
    if rates is None:
        return None
    return (f"{profile.device}: language models at {_flop_s(rates.train_flop_s)} training, "
            f"{_flop_s(rates.eval_flop_s)} evaluation ({rates.basis})"
            + (f"; {note}" if note else ""))


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
