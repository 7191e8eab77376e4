"""maxup.io: atomic writes honour the process umask (results readable by collaborators)."""

from __future__ import annotations

import os
import stat

import pytest

from maxup.io import atomic_write_json, atomic_write_text


@pytest.fixture
def umask():
    """Set a umask for one test; the old one is restored after."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_regression_results_are_not_created_0600(tmp_path, umask, mask, mode):
    umask(mask)
    a = atomic_write_json(tmp_path / "record.json", {"x": 1})
    b = atomic_write_text(tmp_path / "t" / "table.md", "| a |\n")
    for path in (a, b):
        assert stat.S_IMODE(path.stat().st_mode) == mode
    # A rewrite (os.replace of a fresh temp file) keeps the same mode.
    atomic_write_json(a, {"x": 2})
    assert stat.S_IMODE(a.stat().st_mode) == mode


def test_checkpoint_honours_umask(tmp_path, umask):
    import torch

    from maxup.checkpoint import save_checkpoint

    umask(0o022)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, config={"seed": 0, "optim": {"schedule": "multistep"}}, model=model,
                    optimizer=opt, epoch=1,
                    history=[{"epoch": 1}])
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
