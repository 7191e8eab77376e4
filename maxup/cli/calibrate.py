"""``maxup calibrate [SPACE ...] [--model MODEL@DATASET ...] [--batch N] [--pack N]``."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLE = """examples:
  maxup calibrate search_spaces/table3_cifar10.yaml          # on a GPU node of the cluster
  maxup calibrate search_spaces/quickstart.yaml --threads 1   # this CPU, as a sweep trial runs
  maxup calibrate --model resnet20@cifar10 --batch 128
  maxup calibrate search_spaces/table3_cifar10.yaml --pack 4  # 4 trials on one GPU (0.25 each)

Measures a no-grad forward and a training step of every model a space uses, at its batch
size, on this machine's device, and writes the device's profile (JSON, schema
maxup.profile/1) to --out (default $MAXUP_PROFILES or ~/.config/maxup/profiles), keeping
the profile's other models. `maxup sweep SPACE --dry-run` prices trials with it.

--pack N also runs training steps in 1 and then N processes at once on the device, for
--pack-seconds each, and stores the packing factor (steps/s of the N together ÷ one alone)
that prices fractional resources.gpus_per_trial (N = 1 / gpus_per_trial trials per GPU). On
a CPU it measures N processes sharing the cores (--threads each)."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLE
    parser.add_argument("spaces", nargs="*", help="search-space YAML files whose models to time")
    parser.add_argument("--model", action="append", default=[], metavar="MODEL@DATASET",
                        help="also time this model at this dataset's input shape")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size for --model entries (default 128) or for all")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="device to measure (default: the GPU when there is one)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads while measuring (a sweep trial uses "
                             "cpus_per_trial)")
    parser.add_argument("--repeats", type=int, default=3, help="measured rounds (median)")
    parser.add_argument("--overhead", type=float, default=None,
                        help="fixed seconds per trial to store (default: keep the profile's, "
                             "else 2 on CPU and 30 on GPU)")
    parser.add_argument("--pack", type=int, default=None, metavar="N",
                        help="also measure N trials sharing the device: the packing factor "
                             "(throughput together ÷ one alone), 2..32")
    parser.add_argument("--pack-seconds", type=float, default=10.0, metavar="S",
                        help="measured seconds of each --pack run, after a warm-up (default 10)")
    parser.add_argument("--out", default=None, help="profile folder to write")


def run(args: argparse.Namespace) -> int:
    from maxup.errors import ConfigError, UsageError
    from maxup.platform import cost
    from maxup.platform.calibrate import MAX_PACK, calibrate, needs_of
    from maxup.platform.space import load_space

    if args.repeats < 1:
        raise UsageError(f"--repeats: got {args.repeats}; allowed: an int >= 1")
    if args.batch is not None and args.batch < 1:
        raise UsageError(f"--batch: got {args.batch}; allowed: an int >= 1")
    if args.pack is not None and not 2 <= args.pack <= MAX_PACK:
        raise UsageError(f"--pack: got {args.pack}; allowed: an int from 2 to {MAX_PACK} "
                         "(trials sharing one device; 1 is the plain calibration)")
    if not (args.pack_seconds > 0 and args.pack_seconds <= 3600):
        raise UsageError(f"--pack-seconds: got {args.pack_seconds:g}; allowed: a number of "
                         "seconds > 0 and <= 3600")
    needs: list[tuple[str, str, int]] = []
    for space in args.spaces:
        for model, data, batch in needs_of(load_space(space).expand()):
            needs.append((model, data, args.batch or batch))
    for entry in args.model:
        if entry.count("@") != 1:
            raise UsageError(f"--model: got {entry!r}; allowed: MODEL@DATASET, e.g. "
                             "resnet20@cifar10")
        model, data = entry.split("@")
        needs.append((model, data, args.batch or 128))
    if not needs:
        raise UsageError("nothing to calibrate: give a search space or --model MODEL@DATASET")
    from maxup.config import check_registered_names, from_dict

    for model, data, _ in needs:
        check_registered_names(from_dict({"model": {"name": model}, "data": {"name": data}}))
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", "cuda", "cpu or auto (no CUDA device on this machine)")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads: got {args.threads}; allowed: an int >= 1")
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(0) if use_cuda else cost.cpu_name()
    out_dir = Path(args.out) if args.out else cost.user_profiles_dir()
    path = out_dir / f"{cost.device_slug(name)}.json"
    base = cost.load_profile(path) if path.exists() else None  # a corrupt one is refused
    overhead = (args.overhead if args.overhead is not None
                else base.trial_overhead_s if base is not None else (30.0 if use_cuda else 2.0))
    threads = torch.get_num_threads()
    source = (f"measured by `maxup calibrate` on host {_host()} ({name}"
              + ("" if use_cuda else f", {threads} torch thread(s)")
              + f"), torch {torch.__version__}; median of {args.repeats} round(s)")
    needs = list(dict.fromkeys(needs))
    pack_source = "" if args.pack is None else (
        f"measured by `maxup calibrate --pack {args.pack}` on host {_host()} ({name}), torch "
        f"{torch.__version__}, {_created()}: training steps of "
        + ", ".join(f"{m}@{d} batch {b}" for m, d, b in needs)
        + f": {args.pack} spawned processes on the {'GPU (time-sliced)' if use_cuda else 'CPU'}"
        f", {threads} torch thread(s) each, ran them for {args.pack_seconds:g} s alone (one), "
        f"together ({args.pack}), alone again, after a warm-up; factor = Σ steps/s together ÷ "
        "mean steps/s alone (the smallest over the models measured)")
    prof = calibrate(needs, device, repeats=args.repeats, base=base, source=source,
                     overhead_s=overhead, pack=args.pack, pack_seconds=args.pack_seconds,
                     threads=threads, pack_source=pack_source)
    if base is not None and base.default_for:
        prof.default_for = base.default_for
    from maxup.io import atomic_write_json

    atomic_write_json(path, prof.to_dict())
    print(f"profile for {name!r}: {path} ({len(prof.models)} model entries)")
    return 0


def _created() -> str:
    from maxup.records import now

    return now()


def _host() -> str:
    import socket

    return socket.gethostname()
