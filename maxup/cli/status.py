"""``maxup status STORAGE/SWEEP`` or ``maxup status SPACE.yaml --storage STORAGE``."""

from __future__ import annotations

import argparse

EXAMPLE = """examples:
  maxup status results/quickstart
  maxup status s3://bucket/maxup/table3_cifar10
  maxup status search_spaces/table3_cifar10.yaml --storage s3://bucket/maxup

Reads only the storage (no Ray, no cluster): each arm's completed, running, failed and pending
seeds, the last heartbeat of running trials, failure reasons, and the remaining trial time."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLE
    parser.add_argument("target", help="STORAGE/SWEEP (a sweep's folder), or a search-space YAML")
    parser.add_argument("--storage", default=None,
                        help="storage root, when TARGET is a search-space file "
                             "(default: ./results)")


def run(args: argparse.Namespace) -> int:
    from maxup.errors import UsageError
    from maxup.platform.status import render, sweep_status

    if args.target.endswith((".yaml", ".yml")):
        st = sweep_status(args.storage or "results", space=args.target)
    else:
        if args.storage is not None:
            raise UsageError("--storage: only with a search-space file as TARGET")
        st = sweep_status(args.target)
    for line in render(st):
        print(line)
    return 0
