"""Running `maxup sweep` as a user would: a fresh process that starts its own local Ray."""

import json
import subprocess
import sys
from pathlib import Path

from maxup.store import Storage

ROOT = Path(__file__).resolve().parents[1]


def run_sweep_cli(space, storage, *extra: str, env=None, timeout: float = 600
                  ) -> subprocess.CompletedProcess:
    """``maxup sweep SPACE --storage STORAGE --no-table EXTRA…`` from the repository root."""
    return subprocess.run([sys.executable, "-m", "maxup", "sweep", str(space), "--storage",
                           str(storage), "--no-table", *extra], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def trial_dir(storage, trial_id: str) -> Path:
    """A trial's folder in the content-addressed store (maxup.store)."""
    return Storage(storage).trial_dir(trial_id).path


def sweep_record_files(storage, name: str) -> dict[str, Path]:
    """Record files of the trials sweep NAME's manifest lists (those written so far), by id."""
    st = Storage(storage)
    manifest = st.read_manifest(name)
    if manifest is None:
        return {}
    files = {e.trial_id: st.trial_dir(e.trial_id).record for e in manifest.trials}
    return {tid: f for tid, f in files.items() if f.exists()}


def sweep_records(storage, name: str) -> dict[str, dict]:
    """The parsed records of sweep NAME's trials, by trial id."""
    return {tid: json.loads(f.read_text()) for tid, f in sweep_record_files(storage, name).items()}
