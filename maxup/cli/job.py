"""``maxup job submit|status|logs|stop|list``: ad-hoc jobs on a Ray cluster.

Argparse wiring and output for :mod:`maxup.platform.jobs`, which talks to the cluster's job
API. Examples::

    maxup job submit -- maxup sweep search_spaces/table3_cifar10.yaml --address auto
    maxup job status raysubmit_XXXX
    maxup job logs raysubmit_XXXX --follow
    maxup job stop raysubmit_XXXX
    maxup job list
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from maxup.errors import UsageError
from maxup.platform import jobs


def _cmd_submit(args) -> int:
    command = list(args.job_argv or [])
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError(
            "job submit: no command given; allowed: `maxup job submit [options] -- COMMAND ...`"
        )
    if args.working_dir:
        working_dir = Path(args.working_dir).expanduser().resolve()
        if not working_dir.is_dir():
            raise UsageError(
                f"job submit --working-dir: got {args.working_dir!r}; allowed: a directory"
            )
    else:
        working_dir = jobs.project_root()
        if working_dir is None:
            raise UsageError(
                f"job submit: no maxup project (pyproject.toml + maxup/) above {Path.cwd()}; "
                "run from the project checkout or pass --working-dir"
            )

    client, address = jobs.connect(args.address)
    job_id = jobs.submit(client, address, command, working_dir=working_dir,
                         submission_id=args.submission_id, num_cpus=args.num_cpus,
                         num_gpus=args.num_gpus)
    print(job_id, flush=True)
    if args.no_wait:
        print(
            f"maxup: submitted to {address}; follow with `maxup job logs {job_id} --follow`",
            file=sys.stderr,
        )
        return 0
    try:
        status = jobs.follow_logs(client, job_id, address)
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
    client, address = jobs.connect(args.address)
    info = jobs.job_info(client, args.job_id, address)
    line = f"{args.job_id}\t{info.status.value}"
    if info.message:
        line += f"\t{info.message}"
    print(line)
    return 0


def _cmd_logs(args) -> int:
    client, address = jobs.connect(args.address)
    if args.follow:
        status = jobs.follow_logs(client, args.job_id, address)
        print(f"maxup: job {args.job_id} {status}", file=sys.stderr)
        return 0
    sys.stdout.write(jobs.job_logs(client, args.job_id, address))
    sys.stdout.flush()
    return 0


def _cmd_stop(args) -> int:
    client, address = jobs.connect(args.address)
    was_running, status = jobs.stop_job(client, args.job_id, address, args.timeout)
    if not was_running:
        print(f"{args.job_id}\t{status}\t(already finished)")
        return 0
    print(f"{args.job_id}\t{status}")
    return 0 if status in jobs.TERMINAL_STATES else 1


def _cmd_list(args) -> int:
    client, address = jobs.connect(args.address)
    print("SUBMISSION_ID\tSTATUS\tSTART\tENTRYPOINT")
    for job in jobs.list_jobs(client, address):
        start = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000))
            if job.start_time
            else "-"
        )
        job_id = job.submission_id or job.job_id or "-"
        print(f"{job_id}\t{job.status.value}\t{start}\t{job.entrypoint}")
    return 0


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
    # dest must not be "command": the dispatcher (maxup/cli/__init__.py) keeps the
    # subcommand name there.
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
    try:
        return args.job_func(args)
    except jobs.JobAPIUnreachable as exc:
        # The library names no flags; on the command line the address is set with --address.
        raise UsageError(
            f"job: cannot reach the Ray job API at {exc.address}: start the cluster (`ray up "
            "cluster.yaml`) and open its tunnel (`ray dashboard cluster.yaml`), or pass "
            f"--address http://HEAD:8265 (see {jobs.DOCS})"
        ) from None
