"""The worker's parent process: forks the child that serves, passes the child's ending on in a
form Grid Engine takes, ends whatever the child left behind, and names the task it died running.

The parent is a child subreaper and kills whatever the child left behind (processes that f
forked, setsid'd or not) before it exits, also when a catchable signal (SIGTERM, or the
SIGUSR2 that ``qsub -notify`` sends ahead of a deletion) ended the child. Grid Engine itself
(SGE 8.1.9, measured) kills only the job's process group, on ``qdel`` and when the job exits:
with its default ``execd_params`` a setsid'd grandchild survives both; ``ENABLE_ADDGRP_KILL=true``
makes it kill every process carrying the job's additional group id. A qdel without -notify is
a SIGKILL, which leaves this parent no chance to clean up.

Standard library, protocol, messages and this package only.
"""
from __future__ import annotations

import mmap
import os
import signal
import sys
import time
import traceback
from typing import Any, NoReturn

from .. import messages, protocol
from .channel import Channel, ChannelError, configuration
from .serve import serve
from .task import RunningTask, libc

TASK_DIED_TIMEOUT = 5.0
PR_SET_CHILD_SUBREAPER = 36  # from <linux/prctl.h>
LEFTOVER_KILL_SECONDS = 5.0
# Signals sent to the job (by qdel, -notify or a limit) that the parent passes on to the child.
FORWARDED = ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGXCPU")


def main() -> None:
    """Fork; the child serves, the parent passes the child's ending on and cleans up after it."""
    sys.stdout.flush()
    sys.stderr.flush()
    become_subreaper()
    shared = RunningTask.shared_slot()
    pid = os.fork()
    if pid == 0:
        _serve_and_exit(shared)
    wait_status, usage = _wait_for(pid)
    end_descendants()
    died_running = RunningTask.read_slot(shared)
    if died_running is not None:
        tell_task_died(*died_running, peak_rss_kb=usage.ru_maxrss)
    _end_as(wait_status)


def _serve_and_exit(shared: mmap.mmap) -> NoReturn:
    """The child: serve, then exit with a status Grid Engine does not treat specially."""
    status = protocol.EXIT_BAD_CONFIGURATION
    try:
        status = serve(shared)
    except BaseException:  # a bug here, or no memory left: say what it was before the exit status does
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(safe_status(status))


def _wait_for(pid: int) -> tuple[int, Any]:
    """Wait for the child, passing on the signals sent to the job and reaping orphans as they end
    (so that none stays a zombie for long); its wait status and resource usage."""
    def forward(signum: int, frame: Any) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # the same signal, sent to the whole group, ended the child just now
            pass

    forwarded = [getattr(signal, name) for name in FORWARDED]
    for signum in forwarded:
        signal.signal(signum, forward)
    while True:
        try:
            ended, wait_status, usage = os.wait4(-1, 0)
        except InterruptedError:
            continue
        if ended == pid:
            break
    for signum in forwarded:  # the child is gone (its pid may be reused): finish the clean-up
        signal.signal(signum, signal.SIG_IGN)
    return wait_status, usage


def _end_as(wait_status: int) -> NoReturn:
    """End this process as the child ended: by the same signal, or with its (safe) exit status."""
    if os.WIFSIGNALED(wait_status):
        signum = os.WTERMSIG(wait_status)
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # SIGKILL and SIGSTOP keep their default action anyway
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # only reached for a signal whose default action is to carry on
    os._exit(safe_status(os.waitstatus_to_exitcode(wait_status)))


def safe_status(status: int) -> int:
    """``status``, unless Grid Engine reserves it (99 requeues the job, 100 errors it)."""
    return protocol.EXIT_RESERVED_STATUS if status in protocol.GRID_ENGINE_RESERVED else status


def tell_task_died(task: int, number: int, peak_rss_kb: int) -> None:
    """Tell the server which task the child was running as it died (and the child's peak memory),
    so that the job's ending is charged to that task alone. Best effort and brief: the job must end."""
    try:
        channel = Channel(*configuration(), timeout=TASK_DIED_TIMEOUT)
        channel.ask(messages.TaskDied(channel.worker_id, task, number, peak_rss_kb), messages.Ack.from_wire,
                    attempts=2)
    except (KeyError, OSError, ValueError, ChannelError) as error:
        print(f"sheepdog worker: could not tell the server that task {task} died: {error}", file=sys.stderr)


def become_subreaper() -> None:
    """Have orphaned descendants (f's daemons, setsid'd or not) reparented to this process, not init.

    Linux only; elsewhere they still escape to init.
    """
    found = libc()
    try:
        if found is not None:
            found.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except AttributeError:  # no prctl in this C library
        pass


def children() -> list[int]:
    """This process's children, read from /proc (``/proc/PID/task/TID/children`` is often not built in)."""
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as handle:
                    parent = handle.read().rsplit(b")", 1)[1].split()[1]  # the command name may hold ")"
            except (OSError, IndexError):
                continue
            if int(parent) == me:
                found.append(int(name))
    return found


def end_descendants() -> None:
    """SIGKILL and reap every process left below this one: for a subreaper, the whole tree.

    A killed child's children are reparented here, so repeat until none is left. Children that are
    not yet reaped cannot be replaced by another process under the same pid, so no stranger is hit.
    """
    deadline = time.monotonic() + LEFTOVER_KILL_SECONDS
    try:
        while True:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
            if time.monotonic() > deadline:
                return
            for pid in children():
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
    except ChildProcessError:
        return  # no child left
    except OSError as error:  # no /proc here, say
        print(f"sheepdog worker: cannot end the processes the task left behind: {error}", file=sys.stderr)
