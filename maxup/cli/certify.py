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
                        help="Gaussian noise std in [0,1] pixel units (e.g. 0.25)")
    parser.add_argument("--n", type=int, default=100_000, help="estimation samples (100000)")
    parser.add_argument("--n0", type=int, default=100, help="selection samples (100)")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability (0.001)")
    parser.add_argument("--batch", type=int, default=400, help="noisy samples per forward (400)")
    parser.add_argument("--skip", type=int, default=20, help="certify every SKIP-th image (20)")
    parser.add_argument("--max-images", dest="max_images", type=int, default=None,
                        help="certify at most K images")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (0)")
    parser.add_argument("--data.root", dest="data_root", default=None,
                        help="dataset root (default: the checkpoint config's data.root)")
    parser.add_argument("--out", default=None,
                        help="write the certification summary JSON here, and beside it (.tsv) "
                             "the per-image file Cohen et al.'s certify.py writes")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")


def validate(args: argparse.Namespace) -> None:
    """Raise :class:`UsageError` naming the flag, the value and what is allowed."""

    def bad(flag: str, value, allowed: str) -> UsageError:
        return UsageError(f"{flag}: got {value!r}; allowed: {allowed}")

    sigma = args.sigma
    if sigma is None or not math.isfinite(sigma) or sigma <= 0:
        raise bad("--sigma", sigma, "a finite number > 0, e.g. 0.25")
    if args.n < 1:
        raise bad("--n", args.n, "an integer >= 1")
    if args.n0 < 1:
        raise bad("--n0", args.n0, "an integer >= 1")
    if not (math.isfinite(args.alpha) and 0.0 < args.alpha < 1.0):
        raise bad("--alpha", args.alpha, "a number in (0, 1), e.g. 0.001")
    if args.batch < 1:
        raise bad("--batch", args.batch, "an integer >= 1")
    if args.skip < 1:
        raise bad("--skip", args.skip, "an integer >= 1")
    if args.max_images is not None and args.max_images < 1:
        raise bad("--max-images", args.max_images, "an integer >= 1")
    if args.device not in ("cpu", "cuda", "auto") and not str(args.device).startswith("cuda:"):
        raise bad("--device", args.device, "cpu, cuda, cuda:N or auto")
    if not Path(args.checkpoint).is_file():
        raise bad("CHECKPOINT", args.checkpoint, "an existing checkpoint file")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise bad("--data.root", args.data_root, "an existing directory")
    if args.out is not None and Path(args.out).is_dir():
        raise bad("--out", args.out, "a file path (not a directory) for the summary JSON")


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
    data_cfg = config.get("data") or {}
    dataset = build_dataset(
        data_cfg["name"], split="test", root=args.data_root or data_cfg.get("root"),
        download=False,
    )
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
    print(f"certified accuracy, sigma={args.sigma}, {len(rows)} images:")
    for r, acc in zip(summary["radii"], summary["certified_accuracy"]):
        print(f"  radius {r:.2f}: {acc:.1f}%")
    if args.out is not None:
        atomic_write_json(args.out, summary)
        tsv = Path(args.out).with_suffix(".tsv")
        atomic_write_text(tsv, cohen_tsv(rows))
        print(f"wrote {args.out} and {tsv} (Cohen et al.'s format)")
    return 0
