"""Ad-hoc Ray jobs on a (remote) cluster: submit, follow, inspect and stop them.

The cluster is reached through its dashboard's job API (``http://HEAD:8265``; on a
``ray up`` cluster open it with ``ray dashboard cluster.yaml``, an SSH tunnel to
127.0.0.1:8265). Ray's token authentication stays on: the token is read the way Ray
documents it and sent as ``Authorization: Bearer <token>``. The command line for all of
this is ``maxup job`` (maxup/cli/job.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from maxup.errors import UsageError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
ADDRESS_ENV_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")

#: Paths (gitignore syntax) never uploaded with the job's working_dir.
WORKING_DIR_EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
    "build",
    "dist",
    "results",
    "runs",
    "checkpoints",
    "ray_results",
    "data/raw",
    "datasets",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.safetensors",
    "*.npz",
    "*.tar",
    "*.tar.gz",
    "*.zip",
]

TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
DOCS = "docs/cluster.md"


# --------------------------------------------------------------------------- helpers


def project_root() -> Path | None:
    """Return the directory holding maxup's ``pyproject.toml`` (the job's working_dir).

    Looks upward from the current directory first, then next to the installed package;
    None when neither holds the project.
    """
    candidates = [Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[2]]
    for directory in candidates:
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file() and (directory / "maxup").is_dir():
            return directory
    return None


def resolve_address(address: str | None) -> str:
    """Pick the job API address: the one given, else the Ray env vars, else the local default.

    Args:
        address: an explicit address or None.
    """
    if address:
        return address
    for name in ADDRESS_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return DEFAULT_ADDRESS


def read_token() -> str | None:
    """Return the cluster token the way Ray looks it up, or None when there is none.

    Order: ``RAY_AUTH_TOKEN``, the file at ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``.
    """
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path_env = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if path_env:
        path = Path(path_env).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise UsageError(
                f"job: RAY_AUTH_TOKEN_PATH={path_env!r} cannot be read "
                f"({exc.strerror or exc}); allowed: a readable file holding the cluster's token"
            ) from None
        if not token:
            raise UsageError(
                f"job: RAY_AUTH_TOKEN_PATH={path_env!r} is empty; "
                "allowed: a file holding the cluster's token"
            )
        return token
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        with contextlib.suppress(OSError):
            return default.read_text().strip() or None
    return None


def _auth_status(exc: BaseException) -> str:
    """Return the HTTP status (as text) behind an authentication failure."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return str(status)
    text = str(exc)
    if text.startswith("Authentication failed") or "403" in text:
        return "403"
    if text.startswith("Authentication required") or "401" in text:
        return "401"
    return "401/403"


def _refused(address: str, status: str) -> UsageError:
    return UsageError(
        f"job: the Ray cluster at {address} refused the request (HTTP {status}): "
        f"set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the cluster's token (see {DOCS})"
    )


class JobAPIUnreachable(UsageError):
    """Nothing answers at the job API address (the message says how to open it).

    Args:
        address: the job API address that was tried.
    """

    def __init__(self, address: str):
        self.address = address
        super().__init__(
            f"job: cannot reach the Ray job API at {address}: start the cluster (`ray up "
            "cluster.yaml`) and open its tunnel (`ray dashboard cluster.yaml`), or use the "
            f"head's job API address http://HEAD:8265 (see {DOCS})"
        )


@contextlib.contextmanager
def _translate_errors(address: str, job_id: str | None = None):
    """Turn Ray/HTTP failures into one-line UsageErrors naming the address."""
    import aiohttp
    import requests
    from ray.exceptions import AuthenticationError, RpcError

    try:
        yield
    except AuthenticationError as exc:
        raise _refused(address, _auth_status(exc)) from None
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status in (401, 403):
            raise _refused(address, str(exc.status)) from None
        raise
    except (ConnectionError, requests.exceptions.ConnectionError, aiohttp.ClientConnectionError):
        raise JobAPIUnreachable(address) from None
    except (requests.exceptions.Timeout, RpcError):
        # RpcError: an address without http:// is taken (as Ray does) for a GCS address.
        raise JobAPIUnreachable(address) from None
    except ValueError as exc:  # Ray's own parse of the address ("Invalid address format")
        if "address" not in str(exc).lower():
            raise
        raise UsageError(f"--address: got {address!r} ({exc}); allowed: the job API's URL, "
                         f"e.g. {DEFAULT_ADDRESS} (the dashboard; `ray dashboard "
                         "cluster.yaml` tunnels it)") from None
    except RuntimeError as exc:
        text = str(exc)
        if job_id is not None and ("does not exist" in text or "status code 404" in text):
            raise UsageError(
                f"job: no job {job_id!r} on the Ray cluster at {address}; "
                "allowed: an id printed by `maxup job submit` or `maxup job list`"
            ) from None
        raise


def connect(address: str | None):
    """Open a ``JobSubmissionClient`` with the cluster token; errors become one line.

    Args:
        address: the job API address or None (then env vars, then the local default).

    Returns:
        (client, address) with the address actually used.
    """
    from ray.job_submission import JobSubmissionClient

    resolved = resolve_address(address)
    token = read_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    # Ray lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override an explicit address; we
    # already applied our own precedence, so hide them while the client resolves it.
    saved = {name: os.environ.pop(name) for name in ADDRESS_ENV_VARS if name in os.environ}
    try:
        with _translate_errors(resolved):
            client = JobSubmissionClient(resolved, headers=headers)
    finally:
        os.environ.update(saved)
    return client, resolved


def _status(client, job_id: str, address: str) -> str:
    with _translate_errors(address, job_id):
        return str(client.get_job_status(job_id).value)


def follow_logs(client, job_id: str, address: str, out=None) -> str:
    """Stream a job's logs to ``out`` until it reaches a terminal state; return that state.

    Args:
        client: a connected ``JobSubmissionClient``.
        job_id: the submission id.
        address: the job API address (for error messages).
        out: text stream to write to (default ``sys.stdout``).
    """
    out = out or sys.stdout

    async def _tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    with _translate_errors(address, job_id):
        try:
            asyncio.run(_tail())
        except RuntimeError as exc:
            # The websocket can drop (e.g. a proxy); fall back to polling below.
            if "does not exist" in str(exc):
                raise
            print(f"maxup: log stream interrupted ({exc}); polling status", file=sys.stderr)
    # The stream ends when the job is terminal; the status can lag by a moment.
    deadline = time.monotonic() + 30.0
    status = _status(client, job_id, address)
    while status not in TERMINAL_STATES and time.monotonic() < deadline:
        time.sleep(0.5)
        status = _status(client, job_id, address)
    while status not in TERMINAL_STATES:  # stream dropped while the job still runs
        time.sleep(2.0)
        status = _status(client, job_id, address)
    return status


# --------------------------------------------------------------------------- operations


def entrypoint_for(command: Sequence[str]) -> str:
    """The job's entrypoint: one argument is a shell command line, several are quoted each.

    Args:
        command: the command and its arguments, at least one.
    """
    return command[0] if len(command) == 1 else shlex.join(command)


def runtime_env_for(working_dir: Path) -> dict:
    """The job's runtime_env: upload ``working_dir`` without caches, results or weights.

    Args:
        working_dir: the directory the job runs in on the cluster.
    """
    return {"working_dir": str(working_dir), "excludes": list(WORKING_DIR_EXCLUDES)}


def submit(client, address: str, command: Sequence[str], *, working_dir: Path,
           submission_id: str | None = None, num_cpus: float | None = None,
           num_gpus: float | None = None) -> str:
    """Submit ``command`` as a job running in an upload of ``working_dir``; return its id.

    Args:
        client: a connected ``JobSubmissionClient`` (:func:`connect`).
        address: the job API address (for error messages).
        command: the command and its arguments, at least one.
        working_dir: the directory to upload.
        submission_id: the job id to use (None: Ray generates one).
        num_cpus: CPUs reserved for the entrypoint (None: Ray's default).
        num_gpus: GPUs reserved for the entrypoint (None: Ray's default).
    """
    kwargs = {}
    if submission_id:
        kwargs["submission_id"] = submission_id
    if num_cpus is not None:
        kwargs["entrypoint_num_cpus"] = num_cpus
    if num_gpus is not None:
        kwargs["entrypoint_num_gpus"] = num_gpus
    with _translate_errors(address):
        return client.submit_job(entrypoint=entrypoint_for(command),
                                 runtime_env=runtime_env_for(working_dir), **kwargs)


def job_info(client, job_id: str, address: str):
    """The job's ``JobDetails`` (status, message, entrypoint, times).

    Args:
        client: a connected ``JobSubmissionClient``.
        job_id: the submission id.
        address: the job API address (for error messages).
    """
    with _translate_errors(address, job_id):
        return client.get_job_info(job_id)


def job_logs(client, job_id: str, address: str) -> str:
    """The job's logs so far.

    Args:
        client: a connected ``JobSubmissionClient``.
        job_id: the submission id.
        address: the job API address (for error messages).
    """
    with _translate_errors(address, job_id):
        return client.get_job_logs(job_id)


def stop_job(client, job_id: str, address: str, timeout: float) -> tuple[bool, str]:
    """Ask the job to stop and wait up to ``timeout`` seconds for a terminal state.

    Args:
        client: a connected ``JobSubmissionClient``.
        job_id: the submission id.
        address: the job API address (for error messages).
        timeout: seconds to wait for the job to reach a terminal state.

    Returns:
        ``(was_running, status)``: False when the job had already finished; the last status.
    """
    with _translate_errors(address, job_id):
        stopping = client.stop_job(job_id)
    status = _status(client, job_id, address)
    if not stopping:
        return False, status
    deadline = time.monotonic() + timeout
    while status not in TERMINAL_STATES and time.monotonic() < deadline:
        time.sleep(0.5)
        status = _status(client, job_id, address)
    return True, status


def list_jobs(client, address: str) -> list:
    """The cluster's jobs, oldest first.

    Args:
        client: a connected ``JobSubmissionClient``.
        address: the job API address (for error messages).
    """
    with _translate_errors(address):
        jobs = client.list_jobs()
    return sorted(jobs, key=lambda j: j.start_time or 0)
