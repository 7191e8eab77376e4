"""Issue 27, item 6: an output path that cannot be one is refused in one line before the
work (it crashed with FileExistsError after doing it), for tables, figures and certify."""

from __future__ import annotations

from pathlib import Path

import pytest

from maxup.cli import main

ROOT = Path(__file__).resolve().parents[1]
SWEEP = str(ROOT / "reproduction" / "fashion_cutout")


@pytest.mark.parametrize("argv, shown", [
    (["tables", SWEEP, "--out", "{f}"], "'{f}'"),
    (["figures", SWEEP, "--out", "{f}/figs"], "'{f}/figs' ('{f}' is a file)"),
    (["certify", "{ck}", "--sigma", "0.25", "--out", "{f}/x.json"],
     "'{f}/x.json'; allowed: a file path under a directory ('{f}' is a file)"),
])
def test_regression_out_under_a_file_is_refused_before_the_work(tmp_path, capsys, argv, shown):
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    checkpoint = tmp_path / "ck.pt"
    checkpoint.write_bytes(b"")  # never opened: the refusal comes first
    argv = [a.format(f=afile, ck=checkpoint) for a in argv]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"maxup: error: --out: got {shown.format(f=afile)}"), err
    assert "allowed: a directory" in err or "allowed: a file path" in err
    assert afile.read_text() == "not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "ck.pt"]
