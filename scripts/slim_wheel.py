"""Slim a wheel: drop folders a run does not need, and rewrite its RECORD so pip accepts it.

    python scripts/slim_wheel.py WHEEL OUT_DIR [--drop PREFIX ...]

Writes ``OUT_DIR/<the same file name>`` (pip reads name, version and tags from it) without
the members under each PREFIX (default :data:`RAY_DROP`: Ray's Java jars, RLlib, Serve, the
LLM library and the dashboard's prebuilt web client — 79.3 MB → 41.5 MB for Ray 2.60's cp312
manylinux wheel, and an embedded local Ray with Tune and Train still runs a sweep). Every
other member is copied byte for byte with its compression. The ``*.dist-info/RECORD`` is
written anew: one ``path,sha256=<urlsafe base64, no padding>,size`` line per kept file and
``RECORD,,`` for itself (the wheel spec, PEP 376/427), so no line names a removed file and
every hash is of the bytes shipped. The output is written to a temp file and renamed.

Exit status 0; 2 with one line for a bad argument (not a wheel, no RECORD, OUT_DIR a file,
OUT_DIR the wheel's own folder); nothing is written then.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import sys
import tempfile
import zipfile
from pathlib import Path

#: What a sweep on an embedded local Ray never imports (issue 30; measured on Ray 2.60).
RAY_DROP = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/", "ray/dashboard/client/build/")


class Refused(Exception):
    """A bad argument: the message is the one line printed."""


def record_hash(data: bytes) -> str:
    """``sha256=<urlsafe base64 without padding>`` of ``data`` (a RECORD line's hash)."""
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _record_name(names: list[str], wheel: Path) -> str:
    """The wheel's own ``<name>-<version>.dist-info/RECORD`` (top level, exactly one)."""
    found = [n for n in names if n.count("/") == 1 and n.endswith(".dist-info/RECORD")]
    if len(found) != 1:
        raise Refused(f"WHEEL: {str(wheel)!r} has {len(found)} top-level *.dist-info/RECORD "
                      "files; allowed: a wheel (.whl) with exactly one")
    return found[0]


def slim(wheel: str | os.PathLike, out_dir: str | os.PathLike,
         drop: tuple[str, ...] = RAY_DROP) -> dict:
    """Write ``out_dir/<wheel's name>`` without the members under ``drop``; new RECORD.

    Args:
        wheel: the wheel file.
        out_dir: folder for the slim wheel (created); not the wheel's own folder.
        drop: member-path prefixes to remove (a folder prefix ends with ``/``).

    Returns:
        ``{"path", "bytes_before", "bytes_after", "removed": {prefix: members}, "kept"}``.

    Raises:
        Refused: a bad argument (the message names it, its value and what is allowed).
    """
    wheel, out_dir = Path(wheel), Path(out_dir)
    if wheel.suffix != ".whl" or not wheel.is_file():
        raise Refused(f"WHEEL: {str(wheel)!r} is not a .whl file; allowed: a wheel file")
    if not zipfile.is_zipfile(wheel):
        raise Refused(f"WHEEL: {str(wheel)!r} is not a zip archive; allowed: a wheel file")
    if out_dir.exists() and not out_dir.is_dir():
        raise Refused(f"OUT_DIR: {str(out_dir)!r} is a file; allowed: a folder (existing or new)")
    if out_dir.exists() and out_dir.resolve() == wheel.parent.resolve():
        raise Refused(f"OUT_DIR: {str(out_dir)!r} is the wheel's own folder; allowed: another "
                      "folder (the slim wheel keeps the file name)")
    bad = [p for p in drop if not p or p.startswith("/") or ".dist-info" in p]
    if bad:
        raise Refused(f"--drop: {bad[0]!r}; allowed: a member path prefix such as ray/jars/ "
                      "(not empty, not absolute, not the dist-info)")
    removed = {p: 0 for p in drop}
    with zipfile.ZipFile(wheel) as src:
        infos = src.infolist()
        record = _record_name([i.filename for i in infos], wheel)
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{wheel.name}.", suffix=".tmp", dir=out_dir)
        os.close(fd)
        lines: list[str] = []
        kept = 0
        try:
            with zipfile.ZipFile(tmp, "w") as dst:
                for info in infos:
                    name = info.filename
                    hit = next((p for p in drop if name.startswith(p)), None)
                    if hit is not None:
                        removed[hit] += 1
                        continue
                    if name == record:
                        continue
                    data = src.read(info)
                    dst.writestr(info, data, compress_type=info.compress_type)
                    if not name.endswith("/"):
                        lines.append(f"{_csv(name)},{record_hash(data)},{len(data)}")
                        kept += 1
                lines.append(f"{_csv(record)},,")
                rec_info = zipfile.ZipInfo(record, date_time=src.getinfo(record).date_time)
                rec_info.external_attr = src.getinfo(record).external_attr
                dst.writestr(rec_info, "\n".join(lines) + "\n", compress_type=zipfile.ZIP_DEFLATED)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
                mask = os.umask(0o022)
                os.umask(mask)
                os.fchmod(f.fileno(), 0o666 & ~mask)  # mkstemp made it 0600
            out = out_dir / wheel.name
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return {"path": str(out), "bytes_before": wheel.stat().st_size,
            "bytes_after": out.stat().st_size, "removed": removed, "kept": kept}


def _csv(path: str) -> str:
    """A RECORD path field (quoted when it holds a comma or a quote, as the csv module does)."""
    if any(c in path for c in ',"\n'):
        return '"' + path.replace('"', '""') + '"'
    return path


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + error)
        print(f"{self.prog}: {message}; allowed: WHEEL OUT_DIR [--drop PREFIX ...]",
              file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="slim_wheel.py", description=__doc__.split("\n\n")[0])
    p.add_argument("wheel")
    p.add_argument("out_dir")
    p.add_argument("--drop", action="append", default=None, metavar="PREFIX",
                   help="member path prefix to remove (repeatable; default: " +
                   " ".join(RAY_DROP) + ")")
    args = p.parse_args(argv)
    try:
        res = slim(args.wheel, args.out_dir, tuple(args.drop) if args.drop else RAY_DROP)
    except Refused as exc:
        print(f"slim_wheel.py: {exc}", file=sys.stderr)
        return 2
    gone = ", ".join(f"{k} ({v} files)" for k, v in res["removed"].items())
    print(f"slim: {res['path']}: {res['bytes_before'] / 1e6:.1f} MB -> "
          f"{res['bytes_after'] / 1e6:.1f} MB; removed {gone}; RECORD rewritten for "
          f"{res['kept']} files")
    for prefix, n in res["removed"].items():
        if n == 0:
            print(f"slim: note: nothing under {prefix} in this wheel", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
