"""``maxup train CONFIG.yaml [--section.key=value …] [--out DIR] [--resume]``."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLE = """example:
  maxup train configs/digits_maxup.yaml --maxup.m=4 --optim.lr=0.05 --out runs/digits-m4
  maxup train configs/cifar10_resnet110_maxup_cutout.yaml --data.root=/data/cifar --out runs/r110
  maxup train configs/digits_maxup.yaml --out runs/digits-m4 --resume   # continue a run

Any config key can be overridden with --section.key=value (values are read as YAML).
The run directory gets config.json (the resolved config), metrics.csv, metrics.jsonl,
record.json (final metrics and history) and checkpoints/last.pt."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLE
    parser.add_argument("config", help="YAML run config (see configs/)")
    parser.add_argument("--out", default=None,
                        help="run directory (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoints/last.pt if it exists")
    parser.add_argument("--workers", type=int, default=None,
                        help="data-parallel workers (shorthand for --train.workers)")
    parser.set_defaults(accepts_extra=True)


def run(args: argparse.Namespace) -> int:
    from maxup.config import check_registered_names, load_config, parse_overrides
    from maxup.errors import UsageError
    from maxup.records import Status

    overrides = parse_overrides(args.extra)
    if args.workers is not None:
        overrides["train.workers"] = args.workers
    cfg = load_config(args.config, overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if not args.resume and (out / "checkpoints" / "last.pt").exists():
        raise UsageError(f"--out: {str(out)!r} already holds a run; allowed: a new directory, "
                         "or --resume to continue it")
    check_registered_names(cfg)
    if cfg.train.workers > 1:
        from maxup.platform.distributed import train_distributed

        try:
            record = train_distributed(cfg, out, resume=args.resume)
        except Exception as exc:  # Ray Train gave up after its retries: keep that on record
            from maxup import records
            from maxup.config import to_dict

            record = records.mark_failed(out / "record.json", config=to_dict(cfg),
                                         reason=f"{type(exc).__name__}: {exc}")
    else:
        from maxup.engine import train

        record = train(cfg, out, resume=args.resume)
    final = record.get("final") or {}
    if record["status"] == Status.FAILED:
        print(f"run failed: {record['failure']['reason']} (see {out / 'record.json'})")
        return 1
    print(f"done: test acc {final.get('test_acc', float('nan')):.2f}% after "
          f"{final.get('epoch')} epochs; results in {out}")
    return 0
