"""Model registry: name -> constructor, and ``build_model`` which adds input normalisation.

Every model returned by :func:`build_model` is an ``nn.Sequential`` with two named children,
``normalize`` (a :class:`~maxup.models.normalize.Normalize`, index 0, applied first) and
``net`` (the registered architecture, index 1). Models therefore take pixel-space inputs in
[0, 1]; ``model[0]``/``model.normalize`` and ``model[1]``/``model.net`` both work, and
``state_dict`` keys are ``normalize.mean``, ``normalize.std`` and ``net.<...>``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from maxup.checkpoint import CheckpointError, load_checkpoint
from maxup.errors import ConfigError
from maxup.models.normalize import Normalize

#: A constructor takes keyword arguments ``num_classes``, ``in_channels``, ``dropout`` and
#: ``image_size`` ((H, W) or None) and returns the bare network (without Normalize).
ModelFn = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFn] = {}


def register_model(name: str) -> Callable[[ModelFn], ModelFn]:
    """Decorator registering a model constructor under ``name``.

    Args:
        name: registry key; registering the same name twice raises ``ValueError``.

    Returns:
        The decorator, which returns the constructor unchanged.
    """

    def deco(fn: ModelFn) -> ModelFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float],
    std: Sequence[float],
    dropout: float = 0.0,
    weights: str | os.PathLike | None = None,
    image_size: tuple[int, int] | None = None,
) -> nn.Sequential:
    """Build a registered model with a ``Normalize(mean, std)`` first layer.

    Args:
        name: one of :func:`list_models`.
        num_classes: number of output logits.
        in_channels: input channels C; ``mean``/``std`` must have length C (or 1).
        mean: per-channel dataset mean in pixel space [0, 1].
        std: per-channel dataset std in pixel space.
        dropout: dropout probability; each architecture documents where it applies it
            (some ignore it).
        weights: optional local checkpoint path (never downloaded): a raw ``state_dict`` or a
            dict with key ``"model"``. Keys may be those of the full model (``normalize.*``,
            ``net.*``) or of the bare network (e.g. a torchvision checkpoint); a ``module.``
            prefix (DDP) is stripped. If only the classifier head differs in shape (e.g. a
            1000-class ImageNet checkpoint fine-tuned to ``num_classes``), everything except
            the head is loaded and the head keeps its fresh initialisation.
        image_size: optional (H, W) of the inputs; only ``mlp`` uses it (default (8, 8)).

    Returns:
        ``nn.Sequential(normalize=Normalize, net=<architecture>)`` mapping (N, C, H, W) inputs
        in [0, 1] to (N, num_classes) logits.
    """
    if name not in _REGISTRY:
        raise ConfigError("model.name", name, "one of " + ", ".join(list_models()))
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError("model.num_classes", num_classes, "a positive integer")
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        raise ConfigError("model.in_channels", in_channels, "a positive integer")
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError("model.dropout", dropout, "a probability in [0, 1)")
    mean, std = tuple(mean), tuple(std)
    if len(mean) not in (1, in_channels) or len(std) != len(mean):
        raise ConfigError(
            "model.mean/std", (mean, std), f"sequences of length {in_channels} (in_channels) or 1"
        )
    net = _REGISTRY[name](
        num_classes=num_classes,
        in_channels=in_channels,
        dropout=float(dropout),
        image_size=None if image_size is None else tuple(image_size),
    )
    model = nn.Sequential(OrderedDict(normalize=Normalize(mean, std), net=net))
    if weights is not None:
        load_weights(model, weights)
    return model


def _head_keys(net: nn.Module) -> set[str]:
    """State-dict keys (relative to ``net``) of the last ``nn.Linear`` module: the head."""
    last = None
    for mod_name, mod in net.named_modules():
        if isinstance(mod, nn.Linear):
            last = mod_name
    if last is None:
        return set()
    return {f"{last}.weight", f"{last}.bias"}


def load_weights(model: nn.Sequential, path: str | os.PathLike) -> list[str]:
    """Load a local checkpoint into a model built by :func:`build_model`.

    Args:
        model: the ``nn.Sequential(normalize, net)`` returned by :func:`build_model`.
        path: local file written by ``torch.save``; a state_dict or ``{"model": state_dict}``.

    Returns:
        The (full-model) keys left at their fresh initialisation because the checkpoint's
        classifier head had a different shape; empty when everything was loaded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError("model.weights", path, "an existing local file")
    try:
        state = load_checkpoint(path, require=())
    except CheckpointError as exc:
        raise ConfigError(
            "model.weights", path, f"a torch.save'd state_dict ({exc.problem})"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError("model.weights", path, "a state_dict (or a dict with key 'model')")
    state = OrderedDict(
        (k[len("module.") :] if k.startswith("module.") else k, v) for k, v in state.items()
    )
    full = any(k.startswith(("normalize.", "net.")) for k in state)
    target: nn.Module = model if full else model.net
    prefix = "net." if full else ""
    own = target.state_dict()
    head = {prefix + k for k in _head_keys(model.net)}
    skipped = []
    for k in list(state):
        if k in own and own[k].shape != state[k].shape:
            if k not in head:
                raise ConfigError(
                    "model.weights",
                    path,
                    f"a checkpoint for this architecture ({k}: checkpoint shape "
                    f"{tuple(state[k].shape)} != model shape {tuple(own[k].shape)})",
                )
            del state[k]
            skipped.append(k)
    missing, unexpected = target.load_state_dict(state, strict=False)
    # A bare-network checkpoint has no normalize.* keys: those keep the configured values.
    missing = [k for k in missing if k not in skipped]
    if missing or unexpected:
        raise ConfigError(
            "model.weights",
            path,
            f"a checkpoint for this architecture (missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]})",
        )
    return [("" if full else "net.") + k for k in skipped]
