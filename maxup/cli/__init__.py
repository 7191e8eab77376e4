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
            return


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``maxup`` console script."""
    from maxup.errors import StartError, UsageError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
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
