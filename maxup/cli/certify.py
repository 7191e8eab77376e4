"""``maxup certify CHECKPOINT``: randomized-smoothing certified accuracy on the test split.

Every argument is validated before torch is imported or the checkpoint is read, so a bad value
raises :class:`maxup.errors.UsageError` having done nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from maxup.errors import UsageError


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``certify`` arguments to ``parser``.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file (.pt)")
    parser.add_argument("--sigma", type=float, required=True,
                        help="Gaussian noise std in (0, 1] pixel units (e.g. 0.25); the "
                             "sigma the model was trained with")
    parser.add_argument("--n", type=int, default=100_000,
                        help="estimation samples, at most 10000000 (100000)")
    parser.add_argument("--n0", type=int, default=100, help="selection samples (100)")
    parser.add_argument("--alpha", type=float, default=0.001,
                        help="failure probability in (0, 0.5] (0.001)")
    parser.add_argument("--batch", type=int, default=400, help="noisy samples per forward (400)")
    parser.add_argument("--skip", type=int, default=20, help="certify every SKIP-th image (20)")
    parser.add_argument("--max-images", dest="max_images", type=int, default=None,
                        help="certify at most K images")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (0)")
    parser.add_argument("--data.name", dest="data_name", default=None,
                        help="the dataset to certify on (default: the one the checkpoint's "
                             "stored config names); another is refused unless "
                             "--allow-other-dataset")
    parser.add_argument("--allow-other-dataset", dest="allow_other_dataset",
                        action="store_true",
                        help="certify on a --data.name other than the checkpoint's own dataset "
                             "(its images must have the same channels and classes; the model "
                             "was not trained on them, so read the radii as such)")
    parser.add_argument("--data.root", dest="data_root", default=None,
                        help="dataset root (default: the checkpoint config's data.root for "
                             "its own dataset, else the dataset's default)")
    parser.add_argument("--out", default=None,
                        help="write the certification summary JSON here, and beside it (.tsv) "
                             "the per-image file Cohen et al.'s certify.py writes")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")


#: CertifyConfig field → the flag that sets it.
CERTIFY_FLAGS = {"sigma": "--sigma", "n0": "--n0", "n": "--n", "alpha": "--alpha",
                 "skip": "--skip", "batch": "--batch", "max_images": "--max-images"}


def validate(args: argparse.Namespace) -> None:
    """Raise :class:`UsageError` naming the flag, the value and what is allowed."""

    def bad(flag: str, value, allowed: str) -> UsageError:
        return UsageError(f"{flag}: got {value!r}; allowed: {allowed}")

    from maxup.config import MAX_SEED, CertifyConfig, from_dict
    from maxup.errors import ConfigError

    if args.sigma is None:
        raise bad("--sigma", None, "a number > 0 and <= 1, e.g. 0.25")
    # The same ranges as a run config's certify section (maxup.config), named by their flags.
    try:
        from_dict({name: getattr(args, name) for name in CERTIFY_FLAGS}, cls=CertifyConfig)
    except ConfigError as exc:
        raise bad(CERTIFY_FLAGS[exc.field], exc.value, exc.allowed) from None
    if not 0 <= args.seed <= MAX_SEED:
        raise bad("--seed", args.seed, f"an integer >= 0 and <= {MAX_SEED}")
    if args.device not in ("cpu", "cuda", "auto") and not str(args.device).startswith("cuda:"):
        raise bad("--device", args.device, "cpu, cuda, cuda:N or auto")
    if not Path(args.checkpoint).is_file():
        raise bad("CHECKPOINT", args.checkpoint, "an existing checkpoint file")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise bad("--data.root", args.data_root, "an existing directory")
    if args.out is not None and Path(args.out).is_dir():
        raise bad("--out", args.out, "a file path (not a directory) for the summary JSON")
    for above in Path(args.out).parents if args.out is not None else ():
        if above.exists():  # a "folder" above it that is a file: refused before the work
            if not above.is_dir():
                raise bad("--out", args.out, f"a file path under a directory ({str(above)!r} "
                                             "is a file)")
            break


def run(args: argparse.Namespace) -> int:
    """Certify the test split of the checkpoint's dataset; print certified accuracy per radius.

    Args:
        args: parsed arguments from :func:`configure`.

    Returns:
        0 on success.
    """
    validate(args)

    import torch

    from maxup.certify import (
        certification_summary,
        certify_dataset,
        cohen_tsv,
        load_model_from_checkpoint,
        num_classes_of,
    )
    from maxup.data import build_dataset
    from maxup.io import atomic_write_json, atomic_write_text

    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device: got {args.device!r}; allowed: cpu or auto (no CUDA device)")

    model, config = load_model_from_checkpoint(args.checkpoint)
    name, root = certified_dataset(args, config)
    warning = sigma_mismatch(config, args.sigma)
    if warning:
        print(f"maxup: warning: {warning}", file=sys.stderr, flush=True)
    trained_on = config["data"]["name"]
    if name != trained_on:
        print(f"maxup: warning: certifying a model trained on {trained_on!r} on the test split "
              f"of {name!r} (--allow-other-dataset)", file=sys.stderr, flush=True)
    dataset = build_dataset(name, split="test", root=root, download=False)
    stop = None
    if args.max_images is not None:
        stop = min(len(dataset), args.max_images * args.skip)

    def progress(done: int, total: int, row: dict) -> None:
        print(
            f"[{done}/{total}] image {row['index']} label {row['label']} "
            f"prediction {row['prediction']} radius {row['radius']:.4f} "
            f"({row['seconds']:.2f}s)",
            file=sys.stderr, flush=True,
        )

    rows = certify_dataset(
        model, dataset, sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha,
        batch=args.batch, skip=args.skip, stop=stop, num_classes=num_classes_of(config),
        seed=args.seed, device=device, progress=progress,
    )
    summary = certification_summary(
        rows, sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha, skip=args.skip,
        batch=args.batch,
    )
    summary["dataset"], summary["trained_on"] = name, trained_on
    print(f"certified accuracy, sigma={args.sigma}, {len(rows)} test images of {name!r}:")
    for r, acc in zip(summary["radii"], summary["certified_accuracy"]):
        print(f"  radius {r:.2f}: {acc:.1f}%")
    if args.out is not None:
        atomic_write_json(args.out, summary)
        tsv = Path(args.out).with_suffix(".tsv")
        atomic_write_text(tsv, cohen_tsv(rows))
        print(f"wrote {args.out} and {tsv} (Cohen et al.'s format)")
    return 0


def certified_dataset(args: argparse.Namespace, config: dict) -> tuple[str, str | None]:
    """The dataset to certify on and its root: the checkpoint's own unless ``--data.name``
    names another, which is refused (a model certified on images it was never trained on gives
    radii that mean nothing) unless ``--allow-other-dataset``, and then only for images of
    the checkpoint's channels and classes (every model here pools to its own image size, so
    another size runs).

    Args:
        args: parsed arguments from :func:`configure`.
        config: the checkpoint's stored run config.

    Returns:
        ``(dataset name, data root or None for the dataset's default)``.
    """
    from maxup.certify import num_classes_of
    from maxup.data import dataset_info, list_datasets

    own = config["data"]["name"]
    name = own if args.data_name is None else args.data_name
    if name == own:
        return own, args.data_root or config["data"].get("root")
    images = [n for n in list_datasets() if dataset_info(n).kind == "image"]
    if name not in images:
        raise UsageError(f"--data.name: got {name!r}; allowed: an image dataset, one of "
                         + ", ".join(images))
    if not args.allow_other_dataset:
        raise UsageError(f"--data.name: got {name!r}; allowed: {own!r}, the dataset the "
                         "checkpoint's stored config names (add --allow-other-dataset to "
                         "certify it on another)")
    mine, theirs = dataset_info(own), dataset_info(name)
    classes = num_classes_of(config)
    if (theirs.in_channels, theirs.num_classes) != (mine.in_channels, classes):
        raise UsageError(
            f"--data.name: got {name!r} ({theirs.in_channels}-channel images, "
            f"{theirs.num_classes} classes); allowed: with --allow-other-dataset, a dataset of "
            f"{mine.in_channels}-channel images and {classes} classes, as the checkpoint's "
            f"{own!r}")
    return name, args.data_root


def sigma_mismatch(config: dict, sigma: float) -> str | None:
    """What is wrong with certifying at ``--sigma`` a model trained as ``config`` says, if
    anything: randomized smoothing certifies the noise level the model was trained for.

    Args:
        config: the checkpoint's resolved run config.
        sigma: the ``--sigma`` asked for.
    """
    augment = config.get("augment") or {}
    if "gaussian" not in (augment.get("ops") or []):
        return (f"certifying at --sigma {sigma:g}, but the model was trained without Gaussian "
                "noise (augment.ops has no 'gaussian'): expect a smoothed classifier that "
                "mostly abstains")
    trained = augment.get("sigma")
    if isinstance(trained, int | float) and not math.isclose(trained, sigma, rel_tol=1e-9):
        return (f"certifying at --sigma {sigma:g}, but the model was trained with "
                f"augment.sigma {trained:g}: certified radii are meaningful at the training "
                f"sigma (pass --sigma {trained:g})")
    return None
