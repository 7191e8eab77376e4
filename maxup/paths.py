"""Local filesystem paths in a run config, made absolute where the command runs.

Sweep trials, and the workers of a data-parallel run, train in Ray worker processes whose
working directory is not the one the command ran from, so a relative path would name another
file there, or none. Every local path of a run config (:data:`PATH_KEYS`) given relative is
therefore resolved once, in the process the user started (the driver), against the directory
the command runs from, before anything is checked, priced, stored or shipped: the preflight
opens exactly what the trials will open, and the stored config names the file a run used.
``~`` is expanded; absolute paths are kept as written; remote URIs (anything with ``://``),
None and the empty string are left alone.

``data.root`` is not part of the trial id (:mod:`maxup.identity`), so resolving it changes no
id. ``model.weights`` is: a relative weights path is stored, and identified, by the file it
names (the same id as the absolute spelling of that file).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

#: Dotted run-config keys that hold a local file or directory path.
PATH_KEYS: tuple[str, ...] = ("data.root", "model.weights")


def resolve_path(value: Any, base_dir: str | os.PathLike) -> Any:
    """``value`` as an absolute local path when it is a relative one (see the module docstring).

    Args:
        value: a config value: a path string, a URI, None or anything else (returned as is).
        base_dir: the directory a relative path is relative to (made absolute against the
            working directory if it is relative itself).
    """
    if not isinstance(value, str) or not value or "://" in value:
        return value
    if os.path.isabs(value):
        return value
    path = Path(os.path.expanduser(value))
    if not path.is_absolute():
        path = Path(base_dir).absolute() / path
    return str(path)


def resolve_paths(config: dict, base_dir: str | os.PathLike) -> dict:
    """A copy of a run config (nested plain data) with every :data:`PATH_KEYS` value resolved
    against ``base_dir`` (:func:`resolve_path`); the input is not changed.

    Args:
        config: nested run config (``maxup.config.to_dict`` or a YAML mapping); absent keys
            and sections are left absent.
        base_dir: the directory relative paths are relative to: the command's working
            directory.
    """
    out = copy.deepcopy(config)
    for key in PATH_KEYS:
        *sections, leaf = key.split(".")
        node: Any = out
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node[leaf] = resolve_path(node[leaf], base_dir)
    return out
