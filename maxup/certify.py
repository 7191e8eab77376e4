"""Randomized-smoothing certification (Cohen, Rosenfeld & Kolter, 2019): PREDICT and CERTIFY.

The smoothed classifier of a base classifier ``f`` is
``g(x) = argmax_c P(f(x + eps) = c)`` with ``eps ~ N(0, sigma^2 I)``. CERTIFY returns a class
``c_A`` and a radius ``R = sigma * Phi^-1(p_A_lower)``; with probability at least ``1 - alpha``
over the Monte-Carlo sampling, either it abstains or ``g`` predicts ``c_A`` at every point of
the l2 ball of radius ``R`` around ``x`` (Cohen et al., Theorem 1 and Proposition 2).

Noise is added in pixel space ([0, 1] inputs), *before* the model's own normalisation layer:
models in this project take [0, 1] images and normalise inside, so ``sigma`` is measured in the
same units as the paper's Table 8 radii.

Used for the paper's Section 4.4 / Table 8 (certified accuracy on CIFAR-10 at radii 0.25..2.75).
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maxup import records
from maxup.checkpoint import load_checkpoint
from maxup.errors import DataError

ABSTAIN = -1
"""Prediction returned when the smoothed classifier abstains."""

DEFAULT_RADII: list[float] = [round(0.25 * i, 2) for i in range(12)]
"""Clean accuracy (r = 0) and the l2 radii of the paper's Table 8: 0.0, 0.25, ..., 2.75."""

__all__ = [
    "ABSTAIN",
    "DEFAULT_RADII",
    "cohen_tsv",
    "certification_summary",
    "certified_accuracy",
    "certify",
    "certify_dataset",
    "image_seed",
    "load_model_from_checkpoint",
    "num_classes_of",
    "lower_confidence_bound",
    "predict",
    "predict_pvalue",
    "radius",
    "sample_noise_counts",
]


# --------------------------------------------------------------------------- statistics


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion.

    Equals ``proportion_confint(n_a, n, alpha=2 * alpha, method="beta")[0]`` as used by
    Cohen et al.'s code; for ``n_a == n`` it is ``alpha ** (1 / n)``.

    Args:
        n_a: number of successes, ``0 <= n_a <= n``.
        n: number of trials, ``n >= 1``.
        alpha: failure probability in (0, 1).

    Returns:
        ``p`` such that ``P(true proportion >= p) >= 1 - alpha``; 0.0 when ``n_a == 0``.
    """
    n_a, n = int(n_a), int(n)
    if n < 1 or not 0 <= n_a <= n:
        raise ValueError(f"need 0 <= n_a <= n and n >= 1; got n_a={n_a}, n={n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1); got {alpha!r}")
    if n_a == 0:
        return 0.0
    from scipy.stats import beta  # here, not at import: sampling code needs no scipy

    return float(beta.ppf(alpha, n_a, n - n_a + 1))


def radius(p_lower: float, sigma: float) -> float:
    """Certified l2 radius ``sigma * Phi^-1(p_lower)`` (Cohen et al., Theorem 1 with p_B = 1 - p_A).

    Args:
        p_lower: lower confidence bound on the top-class probability, in [0, 1].
        sigma: standard deviation of the Gaussian noise, > 0.
    """
    from scipy.stats import norm

    return float(sigma * norm.ppf(p_lower))


def predict_pvalue(n_a: int, n_b: int) -> float:
    """Two-sided binomial-test p-value of ``n_a`` vs ``n_b`` under p = 0.5 (used by PREDICT).

    Args:
        n_a: count of the most frequent class.
        n_b: count of the runner-up class.

    Returns:
        ``scipy.stats.binomtest(n_a, n_a + n_b, 0.5).pvalue``; 1.0 when both counts are 0.
    """
    n_a, n_b = int(n_a), int(n_b)
    if n_a + n_b == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(n_a, n_a + n_b, 0.5).pvalue)


# --------------------------------------------------------------------------- sampling


def _check_common(sigma: float, n: int, alpha: float | None, batch: int, num_classes: int) -> None:
    if not (isinstance(sigma, int | float) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0; got {sigma!r}")
    if int(n) < 1:
        raise ValueError(f"number of samples must be >= 1; got {n!r}")
    if alpha is not None and not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1); got {alpha!r}")
    if int(batch) < 1:
        raise ValueError(f"batch must be >= 1; got {batch!r}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes!r}")


def sample_noise_counts(
    model: nn.Module,
    x: torch.Tensor,
    num: int,
    sigma: float,
    num_classes: int,
    batch: int = 400,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Count the base classifier's argmax predictions on ``num`` noisy copies of ``x``.

    Copies are ``x + sigma * N(0, I)`` drawn in chunks of ``batch`` under
    ``torch.inference_mode()`` with the model in eval mode (its previous mode is restored).

    Args:
        model: base classifier mapping (B, C, H, W) images in [0, 1] to (B, num_classes) logits;
            it normalises internally, so noise is added in pixel space.
        x: ONE image, shape (C, H, W) (any shape without a batch dimension works), floating
            point, on the model's device.
        num: number of noisy samples, >= 1.
        sigma: noise standard deviation in pixel units, > 0.
        num_classes: number of classes K.
        batch: samples per forward pass.
        generator: torch.Generator on ``x.device`` (None: the global RNG).

    Returns:
        LongTensor of shape (num_classes,) on the CPU; entries sum to ``num``.
    """
    _check_common(sigma, num, None, batch, num_classes)
    if not torch.is_floating_point(x):
        raise ValueError(f"x must be a floating-point image in [0, 1]; got dtype {x.dtype}")
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(
            f"generator is on {generator.device} but the image is on {x.device}; "
            "draw noise with a generator on the image's device"
        )
    num, batch = int(num), int(batch)
    counts = torch.zeros(num_classes, dtype=torch.long, device=x.device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            remaining = num
            while remaining > 0:
                b = min(batch, remaining)
                remaining -= b
                noise = torch.randn(
                    (b, *x.shape), generator=generator, device=x.device, dtype=x.dtype
                )
                noisy = noise.mul_(sigma).add_(x)  # x + sigma * N(0, I), in place
                logits = model(noisy)
                if logits.ndim != 2 or logits.shape[0] != b:
                    raise ValueError(
                        f"model must return (batch, num_classes) logits; got {tuple(logits.shape)}"
                    )
                preds = logits.argmax(dim=1)
                c = torch.bincount(preds, minlength=num_classes)
                if c.numel() > num_classes:
                    raise ValueError(
                        f"model predicted class {int(preds.max())} but num_classes={num_classes}"
                    )
                counts += c
    finally:
        model.train(was_training)
    return counts.cpu()


# --------------------------------------------------------------------------- PREDICT / CERTIFY


def certify(
    model: nn.Module,
    x: torch.Tensor,
    *,
    sigma: float,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch: int = 400,
    num_classes: int,
    generator: torch.Generator | None = None,
) -> tuple[int, float]:
    """Cohen et al.'s CERTIFY: a prediction of the smoothed classifier and a certified l2 radius.

    ``n0`` samples select the top class c_A; ``n`` fresh samples count n_A for c_A;
    ``p_A_lower = lower_confidence_bound(n_A, n, alpha)``. Guarantee: with probability at least
    ``1 - alpha`` over the sampling, if the result is not an abstention then the smoothed
    classifier ``g`` predicts c_A at every point within l2 distance ``radius`` of ``x``.

    Args:
        model: base classifier, (B, C, H, W) in [0, 1] -> (B, num_classes) logits.
        x: one image, shape (C, H, W), on the model's device.
        sigma: noise standard deviation (pixel units), > 0.
        n0: selection samples, >= 1.
        n: estimation samples, >= 1.
        alpha: failure probability in (0, 1).
        batch: samples per forward pass.
        num_classes: number of classes K.
        generator: torch.Generator on ``x.device``.

    Returns:
        ``(prediction, radius)``: ``(c_A, sigma * Phi^-1(p_A_lower))``, or ``(-1, 0.0)`` when
        ``p_A_lower < 0.5`` (abstain).
    """
    _check_common(sigma, n, alpha, batch, num_classes)
    if int(n0) < 1:
        raise ValueError(f"n0 must be >= 1; got {n0!r}")
    counts0 = sample_noise_counts(model, x, n0, sigma, num_classes, batch, generator)
    c_a = int(counts0.argmax())
    counts = sample_noise_counts(model, x, n, sigma, num_classes, batch, generator)
    p_lower = lower_confidence_bound(int(counts[c_a]), int(n), alpha)
    if p_lower < 0.5:
        return ABSTAIN, 0.0
    return c_a, radius(p_lower, sigma)


def predict(
    model: nn.Module,
    x: torch.Tensor,
    *,
    sigma: float,
    n: int = 100_000,
    alpha: float = 0.001,
    batch: int = 400,
    num_classes: int,
    generator: torch.Generator | None = None,
) -> int:
    """Cohen et al.'s PREDICT: the smoothed classifier's class, or -1 (abstain).

    Counts over ``n`` noisy samples; with top two counts n_A, n_B it abstains when the two-sided
    binomial test ``binomtest(n_A, n_A + n_B, 0.5).pvalue > alpha``. Guarantee: the probability
    of returning a class other than ``g(x)`` is at most ``alpha``.

    Args:
        model: base classifier, (B, C, H, W) in [0, 1] -> (B, num_classes) logits.
        x: one image, shape (C, H, W), on the model's device.
        sigma: noise standard deviation (pixel units), > 0.
        n: samples, >= 1.
        alpha: failure probability in (0, 1).
        batch: samples per forward pass.
        num_classes: number of classes K.
        generator: torch.Generator on ``x.device``.
    """
    _check_common(sigma, n, alpha, batch, num_classes)
    counts = sample_noise_counts(model, x, n, sigma, num_classes, batch, generator)
    # stable descending order: ties go to the lower class index, as argmax does
    order = sorted(range(num_classes), key=lambda c: (-int(counts[c]), c))
    n_a = int(counts[order[0]])
    n_b = int(counts[order[1]]) if num_classes > 1 else 0
    if predict_pvalue(n_a, n_b) > alpha:
        return ABSTAIN
    return order[0]


# --------------------------------------------------------------------------- datasets


def image_seed(seed: int, index: int) -> int:
    """Seed of the noise generator for image ``index`` of a run seeded with ``seed``.

    Depends only on ``(seed, index)``, so any slicing of a dataset into shards reproduces the
    rows of a single run over the whole range.
    """
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])  # < 2**63


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def certify_dataset(
    model: nn.Module,
    dataset: Sequence,
    *,
    sigma: float,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch: int = 400,
    skip: int = 20,
    start: int = 0,
    stop: int | None = None,
    num_classes: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int, dict], Any] | None = None,
) -> list[dict]:
    """CERTIFY every ``skip``-th image: indices ``range(start, stop or len(dataset), skip)``.

    The noise generator of image ``i`` is seeded with :func:`image_seed` ``(seed, i)``, so shards
    (``start``/``stop`` slices aligned to ``skip``) give the same rows as one run over the union.

    Args:
        model: base classifier, (B, C, H, W) in [0, 1] -> (B, num_classes) logits; moved to
            ``device``.
        dataset: indexable; ``dataset[i]`` is ``(image, label)`` with image (C, H, W) in [0, 1].
        sigma, n0, n, alpha, batch: as in :func:`certify`.
        skip: stride between certified indices, >= 1.
        start: first index; stop: end (exclusive), None for ``len(dataset)``.
        num_classes: number of classes K.
        seed: run seed combined with each index.
        device: "cpu", "cuda", "cuda:N" or "auto".
        progress: optional callback ``progress(done, total, row)`` after each image.

    Returns:
        One dict per image: ``{"index", "label", "prediction", "radius", "correct", "seconds"}``;
        ``prediction`` is -1 and ``radius`` 0.0 for abstentions (``correct`` is then False).
    """
    if int(skip) < 1:
        raise ValueError(f"skip must be >= 1; got {skip!r}")
    dev = _resolve_device(device)
    model = model.to(dev)
    end = len(dataset) if stop is None else min(int(stop), len(dataset))
    indices = range(int(start), end, int(skip))
    rows: list[dict] = []
    for done, i in enumerate(indices, start=1):
        image, label = dataset[i]
        label = int(label)
        t0 = time.perf_counter()
        x = torch.as_tensor(image).to(dev)
        if not torch.is_floating_point(x):
            raise ValueError(f"dataset[{i}] image must be floating point in [0, 1]; got {x.dtype}")
        gen = torch.Generator(device=dev)
        gen.manual_seed(image_seed(seed, i))
        pred, rad = certify(
            model, x, sigma=sigma, n0=n0, n=n, alpha=alpha, batch=batch,
            num_classes=num_classes, generator=gen,
        )
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        row = {
            "index": int(i),
            "label": label,
            "prediction": int(pred),
            "radius": float(rad),
            "correct": bool(pred == label),
            "seconds": max(0.0, time.perf_counter() - t0),
        }
        rows.append(row)
        if progress is not None:
            progress(done, len(indices), row)
    return rows


def certified_accuracy(rows: Sequence[dict], radii: Sequence[float] = DEFAULT_RADII) -> list[float]:
    """Percent of rows certified correct at each radius: ``correct and radius >= r``
    (:func:`maxup.records.certified_accuracy`, shared with the analysis tables).

    Abstentions (prediction -1) count as wrong.

    Args:
        rows: rows from :func:`certify_dataset` (non-empty).
        radii: l2 radii to report.
    """
    return records.certified_accuracy(list(rows), radii)


def cohen_tsv(rows: Sequence[dict]) -> str:
    """The rows as the tab-separated file Cohen et al.'s ``code/certify.py`` writes.

    Header ``idx label predict radius correct time``, one line per certified image:
    ``predict`` is -1 for an abstention, ``correct`` 1 or 0, ``time`` the image's wall time
    as ``H:MM:SS.ffffff``; so their ``code/analyze.py`` (and any script written for it) reads
    our certifications unchanged. Radii keep full precision (Cohen et al. print 3 digits).

    Args:
        rows: rows from :func:`certify_dataset`.
    """
    lines = ["idx\tlabel\tpredict\tradius\tcorrect\ttime"]
    for r in rows:
        elapsed = str(datetime.timedelta(seconds=float(r.get("seconds", 0.0))))
        lines.append(f"{r['index']}\t{r['label']}\t{r['prediction']}\t{float(r['radius'])!r}"
                     f"\t{int(bool(r['correct']))}\t{elapsed}")
    return "\n".join(lines) + "\n"


def certification_summary(
    rows: Sequence[dict],
    *,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    skip: int,
    batch: int,
    radii: Sequence[float] = DEFAULT_RADII,
) -> dict:
    """The ``certification`` object of a trial record (docs/records.md).

    Args:
        rows: rows from :func:`certify_dataset`.
        sigma, n0, n, alpha, skip, batch: the settings the rows were certified with.
        radii: radii for ``certified_accuracy``.

    Returns:
        ``{"sigma", "n0", "n", "alpha", "skip", "batch", "radii", "certified_accuracy", "rows"}``.
    """
    radii = [float(r) for r in radii]
    return {
        "sigma": float(sigma),
        "n0": int(n0),
        "n": int(n),
        "alpha": float(alpha),
        "skip": int(skip),
        "batch": int(batch),
        "radii": radii,
        "certified_accuracy": certified_accuracy(rows, radii),
        "rows": [dict(row) for row in rows],
    }


# --------------------------------------------------------------------------- checkpoints


def _strip_prefixes(state: dict) -> dict:
    for prefix in ("_orig_mod.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def num_classes_of(config: dict) -> int:
    """Number of classes of a run config: ``config["model"]["num_classes"]`` or the dataset's."""
    from maxup.data import dataset_info

    explicit = (config.get("model") or {}).get("num_classes")
    if explicit:
        return int(explicit)
    return int(dataset_info(config["data"]["name"]).num_classes)


def load_model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a trained model from a checkpoint, in eval mode on the CPU.

    The checkpoint is a ``torch.save``d dict with at least ``{"config": <nested run config>,
    "model": <state_dict>}``; it is read with ``weights_only=True`` (no arbitrary unpickling).

    Args:
        path: checkpoint file.

    Returns:
        ``(model, config)``; the model takes (B, C, H, W) images in [0, 1].
    """
    path = Path(path)
    ckpt = load_checkpoint(path, require=("config", "model"))
    config = ckpt["config"]
    try:
        model_cfg, data_name = config["model"], config["data"]["name"]
        model_name = model_cfg["name"]
    except (KeyError, TypeError) as exc:
        raise DataError(
            f"checkpoint {str(path)!r}: config lacks {exc}; expected model.name and data.name"
        ) from exc
    from maxup.data import dataset_info
    from maxup.models import build_model

    info = dataset_info(data_name)
    if info.kind != "image":
        raise DataError(f"checkpoint {str(path)!r}: a model of the {info.kind} dataset "
                        f"{data_name!r}; expected an image classifier's checkpoint (randomized "
                        "smoothing certifies image classifiers)")
    model = build_model(
        model_name,
        num_classes=num_classes_of(config),
        in_channels=info.in_channels,
        mean=info.mean,
        std=info.std,
        dropout=model_cfg.get("dropout", 0.0) or 0.0,
        image_size=tuple(info.image_size),
    )
    try:
        model.load_state_dict(_strip_prefixes(dict(ckpt["model"])))
    except RuntimeError as exc:  # architecture changed or wrong model.name
        detail = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc))
        raise DataError(
            f"checkpoint {str(path)!r}: weights do not fit model {model_name!r} on "
            f"{data_name!r} ({detail}); expected a checkpoint of that architecture"
        ) from exc
    model.eval()
    return model, config
