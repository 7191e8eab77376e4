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
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from maxup.errors import ConfigError, UsageError

AUGMENTATIONS = ("crop_flip", "cutout", "gaussian", "cutmix", "mixup")


@dataclass
class ModelConfig:
    """The network: a registry name (``maxup.models``) and its options."""

    name: str = "small_cnn"
    num_classes: int | None = None  # None: the dataset's number of classes
    dropout: float = 0.0
    weights: str | None = None  # local weights file for fine-tuning; never downloaded

    def validate(self) -> None:
        _check(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "0 <= dropout < 1")
        if self.num_classes is not None:
            _check(self.num_classes >= 2, "model.num_classes", self.num_classes, "an int >= 2")


@dataclass
class DataConfig:
    """The dataset: a registry name (``maxup.data``), where it lives, and how much of it."""

    name: str = "digits"
    root: str | None = None  # None: the dataset's default location
    subset: int | None = None  # train on a fixed random subset of this many images
    download: bool = False
    num_workers: int = 0
    train_transform: Literal["standard", "none"] = "standard"

    def validate(self) -> None:
        if self.subset is not None:
            _check(self.subset >= 1, "data.subset", self.subset, "null or an int >= 1")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, "an int >= 0")


@dataclass
class AugmentConfig:
    """The random augmentation MaxUp draws m copies from, applied per copy in ``ops`` order."""

    ops: list[str] = field(default_factory=lambda: ["gaussian"])
    sigma: float = 0.25  # Gaussian noise std, pixel units ([0, 1] images)
    cutout_size: int = 16  # side of the Cutout square, pixels
    cutmix_alpha: float = 1.0
    mixup_alpha: float = 1.0
    crop_padding: int = 4  # pixels of zero padding before the random crop

    def validate(self) -> None:
        _check(len(self.ops) >= 1, "augment.ops", self.ops, f"a non-empty list of {AUGMENTATIONS}")
        for op in self.ops:
            _check(op in AUGMENTATIONS, "augment.ops", op, f"one of {', '.join(AUGMENTATIONS)}")
        _check(len(set(self.ops)) == len(self.ops), "augment.ops", self.ops, "each op at most once")
        _check(self.sigma >= 0, "augment.sigma", self.sigma, "sigma >= 0")
        _check(self.cutout_size >= 1, "augment.cutout_size", self.cutout_size, "an int >= 1")
        _check(self.cutmix_alpha > 0, "augment.cutmix_alpha", self.cutmix_alpha, "alpha > 0")
        _check(self.mixup_alpha > 0, "augment.mixup_alpha", self.mixup_alpha, "alpha > 0")
        _check(self.crop_padding >= 0, "augment.crop_padding", self.crop_padding, "an int >= 0")


@dataclass
class MaxUpConfig:
    """The objective: worst of ``m`` copies (m = 1 is standard augmentation training).

    ``bn`` chooses how BatchNorm behaves in the no-grad selection pass: ``batch_stats`` (the
    default) normalises with the selection batch's own statistics, as the trained forward does,
    but leaves running statistics untouched; ``eval`` uses the running statistics.
    """

    m: int = 4
    mode: Literal["efficient", "naive"] = "efficient"
    bn: Literal["batch_stats", "eval"] = "batch_stats"
    warmup_epochs: int = 0  # epochs of standard augmentation before MaxUp (paper: 5 from scratch)
    chunk: int | None = 2  # copies per selection forward (bounds its memory); None: all m

    def validate(self) -> None:
        _check(self.m >= 1, "maxup.m", self.m, "an int >= 1")
        _check(self.warmup_epochs >= 0, "maxup.warmup_epochs", self.warmup_epochs, "an int >= 0")
        if self.chunk is not None:
            _check(self.chunk >= 1, "maxup.chunk", self.chunk, "null or an int >= 1")


@dataclass
class OptimConfig:
    """SGD with momentum and its learning-rate schedule (milestones are epochs)."""

    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1

    def validate(self) -> None:
        _check(self.lr > 0, "optim.lr", self.lr, "lr > 0")
        _check(0 <= self.momentum < 1, "optim.momentum", self.momentum, "0 <= momentum < 1")
        _check(not self.nesterov or self.momentum > 0, "optim.nesterov", self.nesterov,
               "false when momentum is 0")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, ">= 0")
        _check(0 < self.gamma <= 1, "optim.gamma", self.gamma, "0 < gamma <= 1")
        _check(all(m >= 1 for m in self.milestones)
               and list(self.milestones) == sorted(set(self.milestones)),
               "optim.milestones", self.milestones, "strictly increasing epochs >= 1")


@dataclass
class TrainConfig:
    """The loop: epochs, batch sizes, device, precision, checkpoints and workers."""

    epochs: int = 10
    batch_size: int = 128  # global: split across data-parallel workers
    eval_batch_size: int = 512
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast applies on GPU only
    channels_last: bool = False
    checkpoint_every: int = 1  # epochs between checkpoints
    workers: int = 1  # data-parallel workers; > 1 runs inside a Ray Train TorchTrainer
    min_workers: int | None = None  # elastic lower bound; None: fixed size
    start_timeout_s: float = 60.0
    progress: bool = True

    def validate(self) -> None:
        _check(self.epochs >= 1, "train.epochs", self.epochs, "an int >= 1")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "an int >= 1")
        _check(self.eval_batch_size >= 1, "train.eval_batch_size", self.eval_batch_size, ">= 1")
        _check(self.checkpoint_every >= 1, "train.checkpoint_every", self.checkpoint_every, ">= 1")
        _check(self.workers >= 1, "train.workers", self.workers, "an int >= 1")
        _check(self.batch_size >= self.workers, "train.batch_size", self.batch_size,
               f"at least train.workers ({self.workers})")
        if self.min_workers is not None:
            _check(1 <= self.min_workers <= self.workers, "train.min_workers", self.min_workers,
                   f"null or 1..train.workers ({self.workers})")
        _check(self.start_timeout_s > 0, "train.start_timeout_s", self.start_timeout_s, "> 0")


@dataclass
class CertifyConfig:
    """Randomized-smoothing certification after training (Cohen et al. 2019)."""

    enabled: bool = False
    sigma: float | None = None  # None: augment.sigma
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    skip: int = 20  # certify every skip-th test image
    batch: int = 400
    max_images: int | None = None

    def validate(self) -> None:
        if self.sigma is not None:
            _check(self.sigma > 0, "certify.sigma", self.sigma, "null or sigma > 0")
        _check(self.n0 >= 1, "certify.n0", self.n0, "an int >= 1")
        _check(self.n >= 1, "certify.n", self.n, "an int >= 1")
        _check(0 < self.alpha < 1, "certify.alpha", self.alpha, "0 < alpha < 1")
        _check(self.skip >= 1, "certify.skip", self.skip, "an int >= 1")
        _check(self.batch >= 1, "certify.batch", self.batch, "an int >= 1")


@dataclass
class RunConfig:
    """Everything one training run needs; stored beside every result."""

    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    maxup: MaxUpConfig = field(default_factory=MaxUpConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    certify: CertifyConfig = field(default_factory=CertifyConfig)

    def validate(self) -> None:
        _check(self.seed >= 0, "seed", self.seed, "an int >= 0")
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
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(prefix + str(unknown[0]), data[unknown[0]],
                          f"known keys of {prefix.rstrip('.') or 'the config'}: "
                          + ", ".join(fields))
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], prefix + name)
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
            return float(value)
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
    """The config as nested plain data (JSON- and YAML-serialisable)."""
    return dataclasses.asdict(cfg)


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


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing or unparsable file is a one-line UsageError."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise UsageError(f"config file {str(path)!r}: not valid YAML{where}") from None
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
