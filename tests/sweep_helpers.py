"""Running `maxup sweep` as a user would: a fresh process that starts its own local Ray."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_sweep_cli(space, storage, *extra: str, env=None, timeout: float = 600
                  ) -> subprocess.CompletedProcess:
    """``maxup sweep SPACE --storage STORAGE --no-table EXTRA…`` from the repository root."""
    return subprocess.run([sys.executable, "-m", "maxup", "sweep", str(space), "--storage",
                           str(storage), "--no-table", *extra], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)
