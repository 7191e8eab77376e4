"""The ``maxup`` dispatcher: one module per command under maxup/cli/, plain help, lazy imports."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from maxup.cli import COMMANDS, DESCRIPTION, main

REPO = Path(__file__).resolve().parent.parent
EXPECTED = {"train", "sweep", "tables", "figures", "report", "certify", "job", "calibrate",
            "status", "verify"}


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_every_command_is_its_own_module_under_maxup_cli():
    assert set(COMMANDS) == EXPECTED
    for name, (module, configure, run, _help_text) in COMMANDS.items():
        assert module == f"maxup.cli.{name}"
        mod = importlib.import_module(module)
        assert Path(mod.__file__) == REPO / "maxup" / "cli" / f"{name}.py"
        assert callable(getattr(mod, configure)) and callable(getattr(mod, run))


def test_top_level_help_is_plain_text_with_one_line_per_command(capsys):
    out = _help(capsys)
    assert "``" not in out and ":class:" not in out
    assert " ".join(out.split()).count(DESCRIPTION) == 1  # argparse re-wraps the text
    lines = out.splitlines()
    for name, (*_, help_text) in COMMANDS.items():
        assert any(ln.split() == [name, *help_text.split()] for ln in lines), (name, out)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_command_help_is_plain_text(capsys, name):
    out = _help(capsys, name)
    assert out.startswith(f"usage: maxup {name} ")
    assert "``" not in out and ":func:" not in out and ":class:" not in out
    if name != "job":  # job's parser says more about the token than the one-line help
        assert COMMANDS[name][3] in out


def test_python_dash_m_maxup_is_the_same_command():
    proc = subprocess.run([sys.executable, "-m", "maxup", "--help"], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0 and "certify" in proc.stdout


def test_tables_imports_neither_torch_nor_ray(tmp_path):
    """``maxup tables`` (help and a real refusal) goes through the dispatcher without either."""
    code = (
        "import json, sys\n"
        "from maxup.cli import main\n"
        "try:\n"
        "    main(['tables', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"rc = main(['tables', {str(tmp_path)!r}])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray'))\n"
        "print('RESULT', json.dumps({'rc': rc, 'heavy': heavy[:5]}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result == {"rc": 2, "heavy": []}
    assert proc.stderr.startswith("maxup: error: RESULTS: ")
