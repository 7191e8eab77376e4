"""The ``maxup`` command: one module per subcommand under ``maxup/cli/``, imported lazily.

Every subcommand module exposes ``configure(parser)`` and ``run(args) -> int`` and is imported
only when its command is chosen, so ``maxup tables`` never imports torch or ray. The argparse
wiring and the checks that name a flag live here; the work is done by library code these
modules import. Bad input is a :class:`maxup.errors.UsageError`: one line on stderr, exit
status 2, nothing launched.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: What ``maxup --help`` says about the program (plain text: argparse prints it verbatim).
DESCRIPTION = ("MaxUp training, ablation sweeps on Ray, randomized-smoothing certification "
               "and the paper's tables and figures.")

#: name → (module, configure function, run function, one-line help)
COMMANDS = {
    "train": ("maxup.cli.train", "configure", "run", "train one run from a YAML config"),
    "sweep": ("maxup.cli.sweep", "configure", "run",
              "run an ablation sweep (search_spaces/*.yaml) on Ray Tune"),
    "tables": ("maxup.cli.tables", "configure", "run",
               "print the paper's tables from stored records"),
    "figures": ("maxup.cli.figures", "configure", "run",
                "write the paper's figures from stored records"),
    "certify": ("maxup.cli.certify", "configure", "run",
                "randomized-smoothing certification of a checkpoint"),
    "report": ("maxup.cli.report", "configure", "run",
               "write a reproduction document from stored sweeps"),
    "job": ("maxup.cli.job", "configure", "run",
            "submit and manage ad-hoc jobs on a Ray cluster"),
    "calibrate": ("maxup.cli.calibrate", "configure", "run",
                  "time each model's steps on this device (a cost profile)"),
    "status": ("maxup.cli.status", "configure", "run",
               "a sweep's progress and remaining cost, from its storage only"),
    "verify": ("maxup.cli.verify", "configure", "run",
               "rerun stored trials and check they reproduce their records"),
}


def _selected_command(argv: list[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


class _Parser(argparse.ArgumentParser):
    """argparse, except that a refused argument is one line (``maxup: error: ...``), exit 2,
    like every other refusal; the usage stays behind ``--help``."""

    def error(self, message: str):
        self.exit(2, f"maxup: error: {message} (see: {self.prog} --help)\n")


class _CommandList(argparse.HelpFormatter):
    """argparse's help, with each command's help on the command's own line: argparse sizes the
    name column without the extra indent it prints command names with, so a name as long as
    ``calibrate`` would push its help onto a second line."""

    def add_argument(self, action):
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction) and action.choices:
            longest = max(map(len, action.choices)) + self._current_indent + self._indent_increment
            self._action_max_length = max(self._action_max_length, longest)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The top-level parser; only the chosen subcommand's module is imported."""
    import maxup

    parser = _Parser(prog="maxup", description=DESCRIPTION, formatter_class=_CommandList)
    parser.add_argument("--version", action="version", version=f"maxup {maxup.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _selected_command(argv)
    for name, (module, configure, _run, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == chosen:
            getattr(importlib.import_module(module), configure)(p)
    return parser


def check_output_dir(flag: str, path) -> None:
    """Refuse an output directory that cannot be one (it, or a folder above it, is a file).

    Args:
        flag: the flag that named it (``--out``, ``--storage``).
        path: the directory, existing or to be created.
    """
    from pathlib import Path

    from maxup.errors import UsageError

    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "" if p == path else f" ({str(p)!r} is a file)"
                raise UsageError(f"{flag}: got {str(path)!r}{where}; allowed: a directory "
                                 "(existing or new), not a file")
            why = _not_writable(p)
            if why:
                raise UsageError(f"{flag}: got {str(path)!r} ({why}); allowed: a directory "
                                 "(existing or new) on a writable file system")
            return


#: File systems of the kernel's own objects: never a place for results (root may "write").
_PSEUDO_FS = {"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs",
              "securityfs", "tracefs", "configfs", "pstore", "bpf", "mqueue", "hugetlbfs",
              "fusectl", "binfmt_misc", "efivarfs", "autofs", "rpc_pipefs", "nsfs"}


def _not_writable(folder) -> str | None:
    """Why nothing can be written under an existing ``folder``; None when it can."""
    import os

    real = os.path.realpath(folder)
    try:
        with open("/proc/self/mounts") as fh:
            mounts = [line.split()[1:4] for line in fh if len(line.split()) >= 4]
    except OSError:
        mounts = []
    best = None
    for point, fstype, options in mounts:
        point = point.replace("\\040", " ")
        if (real == point or real.startswith(point.rstrip("/") + "/")) and (
                best is None or len(point) > len(best[0])):
            best = (point, fstype, options)
    if best is not None:
        point, fstype, options = best
        if fstype in _PSEUDO_FS:
            return f"{point} is the kernel's {fstype} file system"
        if "ro" in options.split(","):
            return f"{point} is mounted read-only"
    if not os.access(real, os.W_OK | os.X_OK):
        return f"{str(folder)!r} is not writable by this user"
    return None


def _sections_with(key: str) -> list[str]:
    """The run-config sections that have a field named ``key`` (``epochs`` → ``train``)."""
    import dataclasses
    import typing

    from maxup.config import RunConfig

    hints = typing.get_type_hints(RunConfig)
    out = []
    for f in dataclasses.fields(RunConfig):
        section = hints[f.name]
        section = next((a for a in typing.get_args(section) if dataclasses.is_dataclass(a)),
                       section)
        if dataclasses.is_dataclass(section) and key in {x.name for x in
                                                         dataclasses.fields(section)}:
            out.append(f.name)
    return out


def _top_level() -> set[str]:
    """The run config's own keys: ``seed`` and the section names."""
    import dataclasses

    from maxup.config import RunConfig

    return {f.name for f in dataclasses.fields(RunConfig)}


def parse_extra(extra: list[str], space_keys: tuple[str, ...] = ()) -> dict:
    """The command line's dotted overrides (:func:`maxup.config.parse_overrides`), with the
    usual slips refused in one line that gives the right spelling: a space instead of ``=``
    (``--maxup.m 4``), a key without its section (``--epochs=3``), and a mapping, which
    would replace a whole section and silently drop its other settings (``--maxup={m: 2}``).

    Args:
        extra: the arguments argparse left over.
        space_keys: undotted keys the command also takes (a sweep's ``seeds``, …).
    """
    from maxup.config import parse_overrides
    from maxup.errors import UsageError

    for i, arg in enumerate(extra):
        body = arg[2:] if arg.startswith("--") else arg
        key = body.split("=", 1)[0]
        value = body.split("=", 1)[1] if "=" in body else None
        if value is None and i + 1 < len(extra) and not extra[i + 1].startswith("-"):
            value = extra[i + 1]
            if "." in key or key in space_keys or key in _top_level():
                raise UsageError(f"override {arg!r} {value!r}: got a space before the value; "
                                 f"allowed: --{key}={value}")
        if key and "." not in key and key not in space_keys and key not in _top_level():
            sections = _sections_with(key)
            shown = f"--{key}={value}" if value is not None else f"--{key}"
            shown_value = value if value is not None else "..."
            spelled = [f"--{s}.{key}={shown_value}" for s in sections]
            hint = f"e.g. {', '.join(spelled)}" if sections else "e.g. --train.epochs=3"
            extra_keys = f" or {', '.join(space_keys)}" if space_keys else ""
            raise UsageError(f"override {shown!r}: got a key without its section; allowed: "
                             f"--section.key=value{extra_keys}, {hint}")
    overrides = parse_overrides(extra)
    for key, value in overrides.items():
        if isinstance(value, dict):
            first = next(iter(value), "key")
            raise UsageError(
                f"--{key}: got {value!r}; allowed: one key per override, e.g. "
                f"--{key}.{first}={value.get(first, 'value')} (a mapping would replace the "
                f"whole {key} section and drop its other settings)")
    return overrides


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``maxup`` console script."""
    from maxup.errors import StartError, UsageError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if args.command is None:  # one line, like every other refusal; the help is one flag away
        print(f"maxup: error: a command is required; allowed: {', '.join(COMMANDS)} "
              "(see: maxup --help)", file=sys.stderr)
        return 2
    module, _configure, run, _help = COMMANDS[args.command]
    args.extra = extra
    try:
        if extra and not getattr(args, "accepts_extra", False):
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
        return int(getattr(importlib.import_module(module), run)(args) or 0)
    except UsageError as exc:
        print(f"maxup: error: {exc}", file=sys.stderr)
        return 2
    except StartError as exc:
        print(f"maxup: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("maxup: interrupted", file=sys.stderr)
        return 130
