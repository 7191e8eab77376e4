"""The run configuration: typed, validated, built from YAML plus dotted overrides.

Each component owns its section and its defaults (minGPT style). A config is built with
:func:`load_config` (YAML file + ``--section.key=value`` overrides) or :func:`from_dict`;
unknown keys, wrong types and out-of-range values raise :class:`maxup.errors.ConfigError`
naming the dotted field, the bad value and what is allowed, before anything runs.
:func:`to_dict` gives the resolved config as plain JSON-able data, and
``from_dict(to_dict(c)) == c``.

Units: learning rates are per step, ``sigma`` is in pixel units of images scaled to [0, 1],
``cutout_size`` in pixels, ``start_timeout_s`` in seconds.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from maxup.errors import ConfigError, UsageError

AUGMENTATIONS = ("crop_flip", "cutout", "gaussian", "cutmix", "mixup")


@dataclass(frozen=True)
class Range:
    """The finite values a numeric config field accepts (stated in its refusal)."""

    lo: float
    hi: float
    lo_open: bool = False  # lo itself excluded
    hi_open: bool = False  # hi itself excluded

    def __contains__(self, value: float) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def allowed(self, leaf: str, integer: bool) -> str:
        """``"m >= 1 and <= 1024 (an integer)"``: what a refusal of field ``leaf`` says."""
        kind = "an integer" if integer else "a finite number"
        return (f"{leaf} {'>' if self.lo_open else '>='} {_fmt(self.lo)} and "
                f"{'<' if self.hi_open else '<='} {_fmt(self.hi)} ({kind})")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _num(default: Any, lo: float, hi: float, *, lo_open: bool = False,
         hi_open: bool = False) -> Any:
    """A numeric field with its allowed range (``None`` values are not range-checked)."""
    return field(default=default, metadata={"range": Range(lo, hi, lo_open, hi_open)})


#: Largest seed accepted (NumPy's legacy generator takes seeds below 2**32).
MAX_SEED = 2**32 - 1


@dataclass
class ModelConfig:
    """The network: a registry name (``maxup.models``) and its options."""

    name: str = "small_cnn"
    num_classes: int | None = _num(None, 2, 100_000)  # None: the dataset's number of classes
    dropout: float = _num(0.0, 0, 1, hi_open=True)
    weights: str | None = None  # local weights file for fine-tuning; never downloaded

    def validate(self) -> None:
        _check_ranges(self, "model.")


#: The versions ``data.version`` may name per dataset, oldest first; the last is what a config
#: that leaves the key out gets. A dataset not listed has one version, 1. A version is what the
#: dataset's files hold (``maxup.data.corpus``: kjv 1 splits by verse, contiguously; kjv 2 by
#: chapter, spread through the Bible); stored records made before the key existed are version 1.
DATA_VERSIONS: dict[str, tuple[int, ...]] = {"kjv": (1, 2)}


def data_versions(name: str) -> tuple[int, ...]:
    """The versions of dataset ``name`` (oldest first; the last is the default)."""
    return DATA_VERSIONS.get(name, (1,))


@dataclass
class DataConfig:
    """The dataset: a registry name (``maxup.data``), where it lives, and how much of it."""

    name: str = "digits"
    root: str | None = None  # None: the dataset's default location
    subset: int | None = _num(None, 1, 100_000_000)  # train on a fixed random subset
    download: bool = False
    num_workers: int = _num(0, 0, 256)
    train_transform: Literal["standard", "none"] = "standard"
    # The dataset's version (DATA_VERSIONS); None resolves to its newest, so a resolved config
    # always names the version it trained on.
    version: int | None = _num(None, 1, 99)

    def __post_init__(self) -> None:
        if self.version is None:
            self.version = data_versions(self.name)[-1]

    def validate(self) -> None:
        _check_ranges(self, "data.")
        versions = data_versions(self.name)
        if len(versions) == 1:
            allowed = f"{versions[0]} ({self.name} has one version)"
        else:
            allowed = (" or ".join(map(str, versions)) + f" (the {self.name} versions; null: "
                       f"{versions[-1]})")
        _check(self.version in versions, "data.version", self.version, allowed)


@dataclass
class AugmentConfig:
    """The random augmentation MaxUp draws m copies from, applied per copy in ``ops`` order."""

    ops: list[str] = field(default_factory=lambda: ["gaussian"])
    sigma: float = _num(0.25, 0, 1)  # Gaussian noise std, pixel units ([0, 1] images)
    cutout_size: int = _num(16, 1, 4096)  # side of the Cutout square, pixels
    cutmix_alpha: float = _num(1.0, 0, 100, lo_open=True)
    mixup_alpha: float = _num(1.0, 0, 100, lo_open=True)
    crop_padding: int = _num(4, 0, 1024)  # pixels of zero padding before the random crop

    def validate(self) -> None:
        _check(len(self.ops) >= 1, "augment.ops", self.ops, f"a non-empty list of {AUGMENTATIONS}")
        for op in self.ops:
            _check(op in AUGMENTATIONS, "augment.ops", op, f"one of {', '.join(AUGMENTATIONS)}")
        _check(len(set(self.ops)) == len(self.ops), "augment.ops", self.ops, "each op at most once")
        _check_ranges(self, "augment.")


@dataclass
class MaxUpConfig:
    """The objective: worst of ``m`` copies (m = 1 is standard augmentation training).

    ``bn`` chooses how BatchNorm behaves in the no-grad selection pass: ``batch_stats`` (the
    default) normalises with the selection batch's own statistics, as the trained forward does,
    but leaves running statistics untouched; ``eval`` uses the running statistics.
    """

    m: int = _num(4, 1, 1024)
    mode: Literal["efficient", "naive"] = "efficient"
    bn: Literal["batch_stats", "eval"] = "batch_stats"
    # epochs of standard augmentation before MaxUp (paper: 5 from scratch)
    warmup_epochs: int = _num(0, 0, 100_000)
    # copies per selection forward (bounds its memory); None: all m
    chunk: int | None = _num(2, 1, 1024)

    def validate(self) -> None:
        _check_ranges(self, "maxup.")


@dataclass
class OptimConfig:
    """SGD with momentum and its learning-rate schedule (milestones are epochs)."""

    lr: float = _num(0.1, 0, 100, lo_open=True)
    momentum: float = _num(0.9, 0, 1, hi_open=True)
    nesterov: bool = False
    weight_decay: float = _num(5e-4, 0, 1)
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = field(default_factory=list)
    gamma: float = _num(0.1, 0, 1, lo_open=True)

    def validate(self) -> None:
        _check_ranges(self, "optim.")
        _check(not self.nesterov or self.momentum > 0, "optim.nesterov", self.nesterov,
               "false when momentum is 0")
        _check(all(m >= 1 for m in self.milestones)
               and list(self.milestones) == sorted(set(self.milestones)),
               "optim.milestones", self.milestones, "strictly increasing epochs >= 1")


@dataclass
class TrainConfig:
    """The loop: epochs, batch sizes, device, precision, checkpoints and workers."""

    epochs: int = _num(10, 1, 100_000)
    batch_size: int = _num(128, 1, 1_048_576)  # global: split across data-parallel workers
    eval_batch_size: int = _num(512, 1, 1_048_576)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast applies on GPU only
    # bit-reproducible arithmetic (maxup/determinism.py); not part of the trial id
    deterministic: bool = True
    channels_last: bool = False
    # torch.compile the image model (maxup/engine/loop.py); an execution choice like the
    # device, not part of the trial id; the record says whether it was on
    compile: bool = False
    # torch.compile's mode: "reduce-overhead" adds CUDA graphs (launch-bound small-batch nets)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    checkpoint_every: int = _num(1, 1, 100_000)  # epochs between checkpoints
    # data-parallel workers; > 1 runs inside a Ray Train TorchTrainer
    workers: int = _num(1, 1, 4096)
    min_workers: int | None = _num(None, 1, 4096)  # elastic lower bound; None: fixed size
    start_timeout_s: float = _num(60.0, 0, 86_400, lo_open=True)  # at most a day
    progress: bool = True

    def validate(self) -> None:
        _check_ranges(self, "train.")
        _check(self.batch_size >= self.workers, "train.batch_size", self.batch_size,
               f"at least train.workers ({self.workers})")
        if self.min_workers is not None:
            _check(1 <= self.min_workers <= self.workers, "train.min_workers", self.min_workers,
                   f"null or 1..train.workers ({self.workers})")


@dataclass
class CertifyConfig:
    """Randomized-smoothing certification after training (Cohen et al. 2019)."""

    enabled: bool = False
    sigma: float | None = _num(None, 0, 1, lo_open=True)  # None: augment.sigma
    n0: int = _num(100, 1, 10_000_000)
    n: int = _num(100_000, 1, 10_000_000)  # Cohen et al. use 100,000
    alpha: float = _num(0.001, 0, 0.5, lo_open=True)
    skip: int = _num(20, 1, 1_000_000)  # certify every skip-th test image
    batch: int = _num(400, 1, 1_048_576)
    max_images: int | None = _num(None, 1, 100_000_000)

    def validate(self) -> None:
        _check_ranges(self, "certify.")


#: Registered corpora (``maxup.data.corpus``): a run on one is a language-modelling run.
TEXT_DATASETS = ("kjv", "ptb", "wikitext2")


@dataclass
class LMConfig:
    """Language modelling (AWD-LSTM on a corpus): model sizes, regularisation, optimisation.

    Present exactly when ``data.name`` is a corpus (then filled with these defaults when
    absent). Defaults are salesforce/awd-lstm-lm's ``main.py`` arguments; the search spaces
    set each paper setting and cite its source. ``optim.lr`` is the SGD learning rate (30 in
    the reference), ``optim.weight_decay`` its ``wdecay`` (1.2e-6), ``train.batch_size`` the
    number of sequences (columns of the batchified stream), ``maxup.m`` the copies of the
    word-embedding-dropout mask.
    """

    emsize: int = _num(400, 1, 65_536)
    nhid: int = _num(1150, 1, 65_536)
    nlayers: int = _num(3, 1, 64)
    dropout: float = _num(0.4, 0, 1, hi_open=True)  # locked dropout on the output
    dropouth: float = _num(0.3, 0, 1, hi_open=True)  # locked dropout between LSTM layers
    dropouti: float = _num(0.65, 0, 1, hi_open=True)  # locked dropout on the embeddings
    dropoute: float = _num(0.1, 0, 1, hi_open=True)  # word-level embedding dropout
    wdrop: float = _num(0.5, 0, 1, hi_open=True)  # DropConnect on hidden-to-hidden weights
    bptt: int = _num(70, 5, 100_000)  # mean window; variable BPTT draws around it
    alpha: float = _num(2.0, 0, 1e6)  # activation regularisation (AR)
    beta: float = _num(1.0, 0, 1e6)  # temporal activation regularisation (TAR)
    clip: float = _num(0.25, 0, 1e6)  # gradient-norm clipping (0: off)
    asgd: Literal["nonmono", "switch", "off"] = "nonmono"  # when averaging starts
    nonmono: int = _num(5, 1, 100_000)  # NT-ASGD's non-monotone interval
    switch: int | None = _num(None, 1, 100_000)  # epoch after which asgd=switch averages
    finetune_epochs: list[int] = field(default_factory=list)  # epochs of each ASGD restart
    eval_batch_size: int = _num(10, 1, 1_048_576)  # validation columns (reference: 10)
    test_batch_size: int = _num(1, 1, 1_048_576)  # test columns (reference: 1)
    # Windows between checkpoints inside an epoch (0: at epoch ends only); where state is
    # saved, not what is trained, so not part of the trial id.
    checkpoint_windows: int = _num(0, 0, 100_000_000)
    adv_eps: float = _num(0.0, 0, 100)  # ADV-AWD-LSTM output-embedding perturbation
    adv_noise: float = _num(0.0, 0, 100)  # ADV-AWD-LSTM Gaussian noise on embeddings
    # m = 1 steps draw one word-dropout mask per sequence (column), as MaxUp's copies are
    # drawn, instead of awd-lstm-lm's one mask for the whole batch: the control arm that
    # differs from m = 2 only in the max (issue 29). m > 1 always draws per column.
    mask_per_sequence: bool = False
    # Dynamic evaluation (Krause et al. 2018) of the best model after the last epoch; the
    # defaults are the current benkrause/dynamic-evaluation dynamiceval.py's argparse defaults
    # (its README: "tuned for AWD-LSTM + dynamic eval on PTB"), for its update rule.
    dyneval: bool = False
    dyneval_lr: float = _num(5e-5, 0, 100)  # eta
    dyneval_lamb: float = _num(0.002, 0, 100)  # decay toward the trained weights
    # off: dyneval_lr/lamb as given; grid / gridfast: dynamiceval.py's --grid / --gridfast,
    # the (eta, lambda) of lowest validation perplexity over its lrlist x lamblist (scaled
    # by dyneval_bptt / 5), on the whole validation split / its first 30,000 tokens.
    dyneval_search: Literal["off", "grid", "gridfast"] = "off"
    dyneval_epsilon: float = _num(2e-5, 0, 100, lo_open=True)
    dyneval_bptt: int = _num(5, 1, 100_000)
    dyneval_batch_size: int = _num(100, 1, 1_048_576)  # columns for gradient statistics
    dyneval_batches: int | None = _num(None, 1, 100_000_000)  # None: the whole train split

    def validate(self) -> None:
        _check_ranges(self, "lm.")
        _check(all(e >= 1 for e in self.finetune_epochs), "lm.finetune_epochs",
               self.finetune_epochs, "a list of epoch counts >= 1")
        if self.asgd == "switch":
            _check(self.switch is not None, "lm.switch", self.switch,
                   "an epoch >= 1 when lm.asgd is switch")


@dataclass
class RunConfig:
    """Everything one training run needs; stored beside every result."""

    seed: int = _num(0, 0, MAX_SEED)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    maxup: MaxUpConfig = field(default_factory=MaxUpConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    certify: CertifyConfig = field(default_factory=CertifyConfig)
    lm: LMConfig | None = None  # language modelling; set exactly for a corpus (TEXT_DATASETS)

    def __post_init__(self) -> None:
        # A corpus run always carries its resolved lm section, so a config that omits it and
        # one that spells out the defaults are the same trial.
        if self.data.name in TEXT_DATASETS and self.lm is None:
            self.lm = LMConfig()

    def validate(self) -> None:
        _check_ranges(self, "")
        if self.data.name in TEXT_DATASETS:
            _check(self.model.name == "awd_lstm", "model.name", self.model.name,
                   f"awd_lstm for the corpus {self.data.name}")
            _check(self.train.workers == 1 or self.train.batch_size % self.train.workers == 0,
                   "train.batch_size", self.train.batch_size,
                   f"a multiple of train.workers ({self.train.workers}) for a corpus")
            # awd-lstm-lm's optimiser: SGD without momentum at a constant rate (ASGD and the
            # seq_len/bptt scaling are the lm section's).
            _check(self.optim.momentum == 0, "optim.momentum", self.optim.momentum,
                   "0 for a corpus (awd-lstm-lm's SGD has no momentum)")
            _check(self.optim.schedule == "constant", "optim.schedule", self.optim.schedule,
                   "constant for a corpus (averaging is lm.asgd's)")
            # The language model has one selection (maxup.lm.objective); the naive one, every
            # copy forwarded with gradients, is its test reference, not a training mode.
            _check(not self.train.compile, "train.compile", self.train.compile,
                   "false for a corpus (compiling applies to image models)")
            _check(self.maxup.mode == "efficient", "maxup.mode", self.maxup.mode,
                   "efficient for a corpus")
            _check(sum(self.lm.finetune_epochs) < self.train.epochs, "lm.finetune_epochs",
                   self.lm.finetune_epochs, f"epochs summing to less than train.epochs "
                   f"({self.train.epochs})")
        else:
            _check(self.lm is None, "lm", "a mapping",
                   "absent unless data.name is a corpus (" + ", ".join(TEXT_DATASETS) + ")")
            _check(self.model.name != "awd_lstm", "model.name", self.model.name,
                   "an image model (awd_lstm needs data.name one of "
                   + ", ".join(TEXT_DATASETS) + ")")
        for f in dataclasses.fields(self):
            sub = getattr(self, f.name)
            if dataclasses.is_dataclass(sub):
                sub.validate()
        _check(self.maxup.warmup_epochs <= self.train.epochs, "maxup.warmup_epochs",
               self.maxup.warmup_epochs, f"<= train.epochs ({self.train.epochs})")
        _check(all(m <= self.train.epochs for m in self.optim.milestones), "optim.milestones",
               self.optim.milestones, f"epochs <= train.epochs ({self.train.epochs})")
        if self.certify.enabled and self.certify.sigma is None:
            _check(self.augment.sigma > 0, "certify.sigma", None,
                   "a value > 0 (augment.sigma is 0, so it cannot stand in)")


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(name, value, allowed)


def _check_ranges(obj: Any, prefix: str) -> None:
    """Refuse any numeric field of dataclass ``obj`` outside its :class:`Range` (NaN, inf and
    overflowing values included); the refusal states the range."""
    for f in dataclasses.fields(obj):
        rng = f.metadata.get("range")
        value = getattr(obj, f.name)
        if rng is None or value is None:
            continue
        if value not in rng:
            raise ConfigError(prefix + f.name, value, rng.allowed(f.name, _is_int(value)))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def field_range(key: str) -> Range | None:
    """The :class:`Range` of the dotted numeric field ``key`` (``"certify.n"``), or None."""
    cls: Any = RunConfig
    *sections, leaf = key.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
        # An optional section (``lm: LMConfig | None``): its dataclass.
        cls = next((a for a in typing.get_args(cls) if dataclasses.is_dataclass(a)), cls)
    f = {f.name: f for f in dataclasses.fields(cls)}[leaf]
    return f.metadata.get("range")


# --------------------------------------------------------------------------- building

def from_dict(data: dict | None, cls: type = RunConfig, prefix: str = "") -> Any:
    """Build and validate a config dataclass from nested plain data.

    Args:
        data: nested mapping, as read from YAML or JSON; missing keys take defaults.
        cls: the dataclass to build (``RunConfig`` for a whole run).
        prefix: dotted path of ``cls`` inside the whole config, used in error messages.
    """
    obj = _build(data or {}, cls, prefix)
    if cls is RunConfig:
        obj.validate()
    return obj


def _build(data: Any, cls: type, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "config", data, "a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ConfigError(prefix + str(unknown[0]), data[unknown[0]],
                          f"known keys of {prefix.rstrip('.') or 'the config'}: "
                          + ", ".join(fields))
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], prefix + name)
        rng = fields[name].metadata.get("range")
        if rng is not None and kwargs[name] is not None and kwargs[name] not in rng:
            # The value as written ("1e400", not the inf it reads as) and the range allowed.
            raise ConfigError(prefix + name, value, rng.allowed(name, _is_int(kwargs[name])))
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    if dataclasses.is_dataclass(tp):
        return _build(value, tp, name + ".")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        section = [a for a in args if dataclasses.is_dataclass(a)]
        if section and isinstance(value, dict):
            # An optional section (``lm``): its own refusal names the dotted field.
            return _build(value, section[0], name + ".")
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, name)
            except ConfigError as exc:
                errors.append(exc.allowed)
        raise ConfigError(name, value, " or ".join(errors + (["null"] if None in args
                                                             or type(None) in args else [])))
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(name, value, "one of " + ", ".join(map(str, args)))
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(name, value, f"a list of {args[0].__name__}")
        return [_coerce(v, args[0], name) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(name, value, "true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(name, value, "an integer")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int beyond any float: the range check refuses it
                return math.inf
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(name, value, "a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(name, value, "a string")
    raise TypeError(f"unsupported config annotation {tp!r} for {name}")


def to_dict(cfg: Any) -> dict:
    """The config as nested plain data (JSON- and YAML-serialisable).

    An image run's config has no ``lm`` key at all (not ``lm: null``), so its trial id is
    the one it had before language modelling existed.
    """
    out = dataclasses.asdict(cfg)
    if isinstance(cfg, RunConfig) and cfg.lm is None:
        out.pop("lm", None)
    return out


def set_dotted(data: dict, key: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``key = "a.b.c"``, creating mappings on the way."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(".".join(parts[: i + 1]), nxt, "a mapping (it has sub-keys)")
        node = nxt
    node[parts[-1]] = value


def get_dotted(data: dict, key: str) -> Any:
    """Return ``data[a][b][c]`` for ``key = "a.b.c"`` (KeyError if absent)."""
    node = data
    for part in key.split("."):
        node = node[part]
    return node


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Parse ``--a.b=value`` (or ``a.b=value``) strings; values are read as YAML scalars.

    ``--maxup.m=4`` gives ``{"maxup.m": 4}``; ``--optim.milestones=[100,150]`` a list;
    ``--model.weights=null`` None.
    """
    out: dict[str, Any] = {}
    for arg in args:
        body = arg[2:] if arg.startswith("--") else arg
        if "=" not in body or not body.split("=", 1)[0]:
            raise UsageError(f"override {arg!r}: expected --section.key=value")
        key, raw = body.split("=", 1)
        try:
            out[key] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (the
    plain loader silently keeps the last value)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class says so
                    continue
                if repeated and key != "<<":
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _UniqueKeyLoader.construct_mapping)


#: The largest YAML document (config, search space, cluster file) read, in bytes. The shipped
#: ones are at most 7 KB (cluster.yaml); PyYAML takes about 0.35 s per MB even of comments, so a
#: 50 MB file of comments ran for 18 s (90 s on a slower machine) before anything was said.
MAX_YAML_BYTES = 1 << 20


def _check_yaml_size(size: int, source: str, more: bool = False) -> None:
    """Refuse a YAML document over :data:`MAX_YAML_BYTES` before it is read whole or parsed.

    Args:
        size: the document's length in bytes (characters for text).
        source: what the message calls the document.
        more: ``size`` is only a lower bound (a file read up to the limit).
    """
    if size > MAX_YAML_BYTES:
        got = (f"more than {MAX_YAML_BYTES} bytes" if more
               else f"{size} bytes ({size / (1 << 20):.1f} MiB)")
        raise UsageError(f"{source}: got {got}; allowed: "
                         f"at most {MAX_YAML_BYTES} bytes (1 MiB; the shipped configs and "
                         "search spaces are at most 7 KB)")


def parse_yaml(text: str | bytes, source: str) -> Any:
    """Parse a YAML document with duplicate keys refused; any failure (a document over
    :data:`MAX_YAML_BYTES` included) is one UsageError line.

    Args:
        text: the document (bytes must be UTF-8).
        source: what the message calls the document (``config file 'x.yaml'``).
    """
    _check_yaml_size(len(text), source)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"{source}: not UTF-8 text (byte {exc.start}); allowed: a YAML "
                             "text file") from None
    if "\0" in text:
        raise UsageError(f"{source}: a binary file (it holds NUL bytes); allowed: a YAML "
                         "text file")
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = str(getattr(exc, "problem", "") or "").strip().splitlines()
        what = f": {problem[0]}" if problem and "given twice" in problem[0] else ""
        raise UsageError(f"{source}: not valid YAML{where}{what}") from None
    except (RecursionError, ValueError, OverflowError) as exc:
        raise UsageError(f"{source}: not usable YAML ({type(exc).__name__}); allowed: a "
                         "mapping of config keys") from None


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing, unreadable, too large or unparsable file is a one-line
    UsageError (the size is refused before the file is read)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {str(path)!r} not found")
    source = f"config file {str(path)!r}"
    try:
        _check_yaml_size(path.stat().st_size, source)
        with path.open("rb") as f:  # at most one byte past the limit, whatever stat() said
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"{source}: cannot be read ({exc.strerror})") from None
    _check_yaml_size(len(raw), source, more=True)  # a file whose size stat() does not know
    data = parse_yaml(raw, source)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), type(data).__name__, "a YAML mapping at the top level")
    return data


def load_config(path: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> RunConfig:
    """Build a validated :class:`RunConfig` from a YAML file plus dotted overrides.

    Args:
        path: YAML file with any subset of the config's sections (None: all defaults).
        overrides: dotted key → value, applied after the file (see :func:`parse_overrides`).
    """
    data = read_yaml(path) if path is not None else {}
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return from_dict(data)


def check_registered_names(cfg: RunConfig) -> None:
    """Refuse model and dataset names missing from the registries (imports torch)."""
    from maxup.data import dataset_info
    from maxup.models import list_models

    dataset_info(cfg.data.name)
    if cfg.model.name not in list_models():
        raise ConfigError("model.name", cfg.model.name, "one of " + ", ".join(list_models()))
