"""`maxup job`: submit, follow, inspect and stop ad-hoc Ray jobs on a (remote) cluster.

The cluster is reached through its dashboard's job API (``http://HEAD:8265``; on a
``ray up`` cluster open it with ``ray dashboard cluster.yaml``, an SSH tunnel to
127.0.0.1:8265). Ray's token authentication stays on: the token is read the way Ray
documents it and sent as ``Authorization: Bearer <token>``.

Examples::

    maxup job submit -- maxup sweep search_spaces/table3_cifar10.yaml --address auto
    maxup job status raysubmit_XXXX
    maxup job logs raysubmit_XXXX --follow
    maxup job stop raysubmit_XXXX
    maxup job list
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import sys
import time
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


def project_root() -> Path:
    """Return the directory holding maxup's ``pyproject.toml`` (the job's working_dir).

    Looks upward from the current directory first, then next to the installed package.
    """
    candidates = [Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[2]]
    for directory in candidates:
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file() and (directory / "maxup").is_dir():
            return directory
    raise UsageError(
        f"job submit: no maxup project (pyproject.toml + maxup/) above {Path.cwd()}; "
        "run from the project checkout or pass --working-dir"
    )


def resolve_address(address: str | None) -> str:
    """Pick the job API address: ``--address``, else the Ray env vars, else the local default.

    Args:
        address: the ``--address`` value or None.
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


def _unreachable(address: str) -> UsageError:
    return UsageError(
        f"job: cannot reach the Ray job API at {address}: start the cluster (`ray up "
        "cluster.yaml`) and open its tunnel (`ray dashboard cluster.yaml`), or pass "
        f"--address http://HEAD:8265 (see {DOCS})"
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
        raise _unreachable(address) from None
    except (requests.exceptions.Timeout, RpcError):
        # RpcError: an address without http:// is taken (as Ray does) for a GCS address.
        raise _unreachable(address) from None
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
        address: the ``--address`` value or None (then env vars, then the local default).

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


# --------------------------------------------------------------------------- commands


def _cmd_submit(args) -> int:
    command = list(args.job_argv or [])
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError(
            "job submit: no command given; allowed: `maxup job submit [options] -- COMMAND ...`"
        )
    # One argument is taken as a shell command line; several are quoted word by word.
    entrypoint = command[0] if len(command) == 1 else shlex.join(command)
    if args.working_dir:
        working_dir = Path(args.working_dir).expanduser().resolve()
        if not working_dir.is_dir():
            raise UsageError(
                f"job submit --working-dir: got {args.working_dir!r}; allowed: a directory"
            )
    else:
        working_dir = project_root()
    runtime_env = {"working_dir": str(working_dir), "excludes": list(WORKING_DIR_EXCLUDES)}

    client, address = connect(args.address)
    kwargs = {}
    if args.submission_id:
        kwargs["submission_id"] = args.submission_id
    if args.num_cpus is not None:
        kwargs["entrypoint_num_cpus"] = args.num_cpus
    if args.num_gpus is not None:
        kwargs["entrypoint_num_gpus"] = args.num_gpus
    with _translate_errors(address):
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, **kwargs)
    print(job_id, flush=True)
    if args.no_wait:
        print(
            f"maxup: submitted to {address}; follow with `maxup job logs {job_id} --follow`",
            file=sys.stderr,
        )
        return 0
    try:
        status = follow_logs(client, job_id, address)
    except KeyboardInterrupt:
        print(
            f"\nmaxup: stopped following; job {job_id} keeps running "
            f"(stop it with `maxup job stop {job_id}`)",
            file=sys.stderr,
        )
        return 130
    print(f"maxup: job {job_id} {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def _cmd_status(args) -> int:
    client, address = connect(args.address)
    with _translate_errors(address, args.job_id):
        info = client.get_job_info(args.job_id)
    status = str(info.status.value)
    line = f"{args.job_id}\t{status}"
    if info.message:
        line += f"\t{info.message}"
    print(line)
    return 0


def _cmd_logs(args) -> int:
    client, address = connect(args.address)
    if args.follow:
        status = follow_logs(client, args.job_id, address)
        print(f"maxup: job {args.job_id} {status}", file=sys.stderr)
        return 0
    with _translate_errors(address, args.job_id):
        logs = client.get_job_logs(args.job_id)
    sys.stdout.write(logs)
    sys.stdout.flush()
    return 0


def _cmd_stop(args) -> int:
    client, address = connect(args.address)
    with _translate_errors(address, args.job_id):
        stopping = client.stop_job(args.job_id)
    if not stopping:
        print(f"{args.job_id}\t{_status(client, args.job_id, address)}\t(already finished)")
        return 0
    status = _status(client, args.job_id, address)
    deadline = time.monotonic() + args.timeout
    while status not in TERMINAL_STATES and time.monotonic() < deadline:
        time.sleep(0.5)
        status = _status(client, args.job_id, address)
    print(f"{args.job_id}\t{status}")
    return 0 if status in TERMINAL_STATES else 1


def _cmd_list(args) -> int:
    client, address = connect(args.address)
    with _translate_errors(address):
        jobs = client.list_jobs()
    jobs = sorted(jobs, key=lambda j: j.start_time or 0)
    print("SUBMISSION_ID\tSTATUS\tSTART\tENTRYPOINT")
    for job in jobs:
        start = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000))
            if job.start_time
            else "-"
        )
        job_id = job.submission_id or job.job_id or "-"
        print(f"{job_id}\t{job.status.value}\t{start}\t{job.entrypoint}")
    return 0


# --------------------------------------------------------------------------- CLI


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="job API of the cluster, e.g. http://127.0.0.1:8265 (default: "
        "$RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, else http://127.0.0.1:8265)",
    )


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``submit/status/logs/stop/list`` sub-subcommands to ``maxup job``.

    Args:
        parser: the ``job`` subcommand's parser.
    """
    parser.description = (
        "Ad-hoc jobs on a Ray cluster through its job API. The token is read from "
        "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (see docs/cluster.md)."
    )
    sub = parser.add_subparsers(dest="job_command", metavar="ACTION", required=True)

    p = sub.add_parser("submit", help="upload this project and run COMMAND on the cluster")
    _add_address(p)
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument("--working-dir", default=None, help="directory to upload (default: project)")
    p.add_argument("--submission-id", default=None, help="job id to use (default: generated)")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs reserved for COMMAND")
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs reserved for COMMAND")
    # dest must not be "command": maxup/cli.py keeps the subcommand name there.
    p.add_argument(
        "job_argv", nargs=argparse.REMAINDER, metavar="COMMAND", help="-- COMMAND [ARG ...]"
    )
    p.set_defaults(job_func=_cmd_submit)

    p = sub.add_parser("status", help="print a job's status")
    _add_address(p)
    p.add_argument("job_id")
    p.set_defaults(job_func=_cmd_status)

    p = sub.add_parser("logs", help="print a job's logs")
    _add_address(p)
    p.add_argument("job_id")
    p.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    p.set_defaults(job_func=_cmd_logs)

    p = sub.add_parser("stop", help="stop a job and wait until it has stopped")
    _add_address(p)
    p.add_argument("job_id")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    p.set_defaults(job_func=_cmd_stop)

    p = sub.add_parser("list", help="list the cluster's jobs")
    _add_address(p)
    p.set_defaults(job_func=_cmd_list)


def run(args: argparse.Namespace) -> int:
    """Run the chosen ``maxup job`` action.

    Args:
        args: parsed arguments from a parser set up by :func:`configure`.

    Returns:
        0 on success; 1 when a followed job did not succeed.
    """
    return args.job_func(args)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m maxup.platform.jobs ...``).

    Args:
        argv: command-line arguments after the program name.
    """
    parser = argparse.ArgumentParser(prog="maxup job")
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UsageError as exc:
        print(f"maxup: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
