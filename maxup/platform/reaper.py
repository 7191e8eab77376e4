"""Kill the embedded Ray's processes when the driver that started them dies.

Ray starts its GCS, raylet and a few monitors fate-shared with the driver (Ray's own
``PR_SET_PDEATHSIG``), but that covers only the driver's direct children. The raylet's
children do not share its fate: after a driver SIGKILL of ``maxup sweep``, the trial workers
trained on for 1.2-2.9 s (until they noticed their raylet was gone), writing records, logs and
checkpoints up to 2.4 s after the kill, and Ray's dashboard and runtime-env agents stayed for
good (still there 30 s later; 4 runs). With this watchdog every process was gone within
0.16 s of the kill and no file changed after it (5 runs). Ray 2.60 offers no switch for this:
``RAY_kill_child_processes_on_worker_exit*`` and ``RAY_process_group_cleanup_enabled`` act
when a worker exits, through the raylet, which dies with the driver (with both set, the same
processes survived).

So :func:`start` (called by :func:`maxup.platform.distributed.start_local_ray` before
``ray.init``) starts a small watchdog, this file run as a script with the driver's pid. It
holds the read end of a pipe whose write end only the driver has (non-inheritable, so no
process Ray executes holds it) and, every 0.2 s, takes a snapshot of the driver's descendants
(pid and start time, read from ``/proc``); a process seen once stays in the snapshot while it
lives, so one that re-parents later (its parent exited) or runs in its own session is still
found. When the driver dies, the kernel closes the pipe and the watchdog wakes at once (its
parent changing is the fallback, for a forked copy of the driver that still holds the pipe;
``PR_SET_PDEATHSIG`` would fire when the thread that started it ends, not the driver).
It then stops every process of its snapshot that is still the same process (same start time:
a reused pid is left alone) together with their live descendants, so nothing forks meanwhile,
kills them all (SIGKILL), and exits. A process started in the last 0.2 s before the driver
died can be missed: a Ray worker takes longer than that to start, so it holds no trial yet,
and it exits on its own once it finds its raylet gone.

When the driver exits normally, an ``atexit`` hook shuts Ray down (Ray's own hook, registered
when ``ray`` is imported, would run after it) and then writes to the pipe: the watchdog gives
what it saw up to :data:`GRACE_S` to exit and kills whatever of it is still there, then exits.
After a clean run nothing is left to kill; after a Ctrl-C, ``ray.shutdown()`` left Ray's
dashboard and runtime-env agents running (~200 MB, and they ignore SIGTERM): issue 27.
It ignores SIGINT and SIGHUP (a Ctrl-C or a closed terminal
reaches the whole process group: the driver handles them, the watchdog must outlive it), has
no output, and is a no-op outside Linux. Only the embedded Ray gets one: a cluster joined by
address is never touched.

This file imports nothing but the standard library: it runs as ``python -I -S reaper.py PID``.
"""

from __future__ import annotations

import atexit
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable

# The snapshot's period; slower on hosts with so many processes that one /proc scan costs
# more than 1/20 of it (at most 5 % of a core).
PERIOD_S = 0.2
#: How long processes still alive after a normal exit's shutdown get before they are killed.
GRACE_S = 0.5
_DISARM = b"exit\n"

_reaper: subprocess.Popen | None = None
_owner: int | None = None


def supported() -> bool:
    """Whether the watchdog can work here: Linux with ``/proc``."""
    return sys.platform.startswith("linux") and os.path.isdir("/proc/self")


def process_table() -> dict[int, tuple[int, int]]:
    """``pid -> (parent pid, start time in clock ticks)`` of every live process (Linux)."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # state, ppid, ..., starttime (20th)
        if fields[0] != b"Z":
            table[int(entry.name)] = (int(fields[1]), int(fields[19]))
    return table


def _children(table: dict[int, tuple[int, int]]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    return children


def descendants(root: int, table: dict[int, tuple[int, int]] | None = None) -> dict[int, int]:
    """``pid -> start time`` of every live descendant of ``root`` (``root`` left out)."""
    table = process_table() if table is None else table
    children = _children(table)
    out: dict[int, int] = {}
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid not in out:
            out[pid] = table[pid][1]
            todo.extend(children.get(pid, ()))
    return out


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except OSError:  # gone already (or not ours to signal)
        return False


def reap(snapshot: dict[int, int]) -> list[int]:
    """Stop, then SIGKILL, each process of ``snapshot`` (pid -> start time) that is still the
    same process, and every live descendant of theirs; returns the pids killed."""
    table = process_table()
    todo = [pid for pid, start in snapshot.items() if table.get(pid, (0, None))[1] == start]
    tried: set[int] = set()
    stopped: set[int] = set()
    while todo:  # a stopped process forks no more: repeat until no new descendant appears
        tried.update(todo)
        stopped.update(pid for pid in todo if _signal(pid, signal.SIGSTOP))
        children = _children(process_table())
        todo = [child for pid in stopped for child in children.get(pid, ())
                if child not in tried]
    return sorted(pid for pid in stopped if _signal(pid, signal.SIGKILL))


def watch(driver: int) -> int:
    """The watchdog's loop (runs in its own process, a child of ``driver``)."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    me = os.getpid()
    snapshot: dict[int, int] = {}
    while os.getppid() == driver:
        t0 = time.monotonic()
        table = process_table()
        # A process seen once stays in the snapshot while it lives, even if it leaves the
        # tree (re-parented when its parent exits); a scan cut short by the driver's death
        # loses nothing.
        snapshot = {pid: start for pid, start in snapshot.items()
                    if table.get(pid, (0, None))[1] == start}
        snapshot.update(descendants(driver, table))
        snapshot.pop(me, None)
        wait = max(PERIOD_S, 20 * (time.monotonic() - t0))
        if select.select([0], [], [], wait)[0]:
            if os.read(0, 64):  # the driver exited normally and shut Ray down: kill only
                # what outlived that shutdown, after a grace period
                deadline = time.monotonic() + GRACE_S
                while _still_alive(snapshot) and time.monotonic() < deadline:
                    time.sleep(0.05)
                reap(snapshot)
                return 0
            break  # end of file: the driver is gone
    reap(snapshot)
    return 0


def _still_alive(snapshot: dict[int, int]) -> bool:
    table = process_table()
    return any(table.get(pid, (0, None))[1] == start for pid, start in snapshot.items())


def start(at_exit: Callable[[], object] | None = None) -> None:
    """Start this process's watchdog (once; later calls keep the running one). A no-op where
    it cannot work or cannot start.

    Args:
        at_exit: called at a normal exit before the watchdog is told to leave (the shutdown
            of what it guards, so that a kill during that shutdown is still covered).
    """
    global _reaper, _owner
    if not supported():
        return
    if _reaper is not None and _owner == os.getpid() and _reaper.poll() is None:
        return
    try:
        _reaper = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__),
                                    str(os.getpid())], stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        _reaper = None
        return
    _owner = os.getpid()
    atexit.register(_disarm, _reaper, _owner, at_exit)


def settle() -> None:
    """Wait until the watchdog's snapshot holds every process the driver has now (one full
    period): a process Ray started in the last 0.2 s, then orphaned by a shutdown (its
    raylet gone), would otherwise be out of its reach. A no-op without a watchdog."""
    if _reaper is not None and _owner == os.getpid() and _reaper.poll() is None:
        time.sleep(1.5 * PERIOD_S)


def _disarm(proc: subprocess.Popen, owner: int, at_exit: Callable[[], object] | None) -> None:
    """At a normal exit (not from a fork): run ``at_exit`` (Ray's shutdown), then tell the
    watchdog to kill what outlived it (after :data:`GRACE_S`) and leave."""
    if os.getpid() != owner or proc.poll() is not None:
        return
    settle()
    try:
        if at_exit is not None:
            at_exit()
    except Exception:  # noqa: BLE001 - the exit goes on; the watchdog must still leave
        pass
    try:
        proc.stdin.write(_DISARM)
        proc.stdin.close()
        proc.wait(timeout=GRACE_S + 5)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass


if __name__ == "__main__":
    sys.exit(watch(int(sys.argv[1])))
