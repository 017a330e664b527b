"""How an attempt ended: the causes, and the table that turns scheduler exit information into one.

Pure: backends translate their own records into :class:`ExitInfo`; everything else reads
:class:`Cause`. Which causes are retried is decided here too, so there is one place to look.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from .model import INFRASTRUCTURE_CAUSES, Cause, Ending, ExitInfo
from .protocol import EXIT_BAD_CONFIGURATION, EXIT_RESERVED_STATUS, EXIT_SERVER_UNREACHABLE, EXIT_SETUP_FAILED

NODE_FAILED = "NODE_FAIL"  # Slurm's state of a job whose node stopped answering


def _aborted(info: ExitInfo) -> Ending:
    return Ending(Cause.ABORTED, "the scheduler aborted or deleted the job before it finished", False)


def _node_failed(info: ExitInfo) -> Ending:
    return Ending(Cause.LOST, "lost with its node: Slurm ended the job NODE_FAIL (the node stopped answering)", False)


def _signaled(info: ExitInfo) -> Ending:
    core = " (core dumped)" if info.core_dumped else ""
    return Ending(Cause.SIGNAL, f"the worker was killed by {info.signal or 'a signal'}{core}", False)


# Statuses the worker itself uses, explained (see protocol).
_WORKER_STATUSES = {
    EXIT_RESERVED_STATUS: (" (the task exited with 99 or 100, which Grid Engine reserves; the worker passed it "
                           "on as 98)"),
    EXIT_SERVER_UNREACHABLE: " (the worker could not reach the sheepdog server; see its stderr file)",
    EXIT_BAD_CONFIGURATION: " (the worker could not load its configuration or the function; see its stderr file)",
    EXIT_SETUP_FAILED: " (a set-up line failed; its number, text and output are in the worker's stderr file)",
    127: " (command not found: check python=)",
}


def _exited(info: ExitInfo) -> Ending:
    if info.exit_status == 0:
        return Ending(Cause.EXIT, "the worker exited with status 0 without reporting", True)
    note = _WORKER_STATUSES.get(info.exit_status or 0, "")
    return Ending(Cause.EXIT, f"the worker exited with status {info.exit_status}{note}", False)


def _unknown(info: ExitInfo) -> Ending:
    return Ending(Cause.ABORTED, "the job ended without an exit status or signal", False)


# Checked in order; the first predicate that holds decides. A node's failure comes first (slurm-drmaa
# calls it aborted), then aborted, because Grid Engine may also report an exit status for a job it deleted.
_TABLE: list[tuple[Callable[[ExitInfo], bool], Callable[[ExitInfo], Ending]]] = [
    (lambda info: info.state == NODE_FAILED, _node_failed),
    (lambda info: info.aborted, _aborted),
    (lambda info: info.signaled, _signaled),
    (lambda info: info.exited and info.exit_status is not None, _exited),
    (lambda info: True, _unknown),
]


def classify(info: ExitInfo, memory_limit: int | None = None, stderr_tail: str = "") -> Ending:
    """Turn a worker's exit information into the cause of whatever attempt it still held.

    ``memory_limit`` (bytes, the sweep's memory= per worker) and the tail of the worker's stderr
    file let a kill for memory be told from other kills; see :func:`memory_kill`.
    """
    killed_for_memory = memory_kill(info, memory_limit, stderr_tail)
    if killed_for_memory is not None:
        return killed_for_memory
    for applies, ending in _TABLE:
        if applies(info):
            return ending(info)
    raise AssertionError("the last row of the table always applies")


# slurmstepd's words when it kills a job step over its --mem (JobAcctGatherParams=OverMemoryKill):
# "StepId=12.batch exceeded memory limit (750981120 > 314572800), being killed" (bytes).
_SLURM_OVER_MEMORY = re.compile(r"exceeded memory limit \((\d+) > (\d+)\)")


def memory_kill(info: ExitInfo, memory_limit: int | None, stderr_tail: str = "") -> Ending | None:
    """The ending "killed for memory" when the evidence says so, else None.

    The evidence, by scheduler: Grid Engine kills a job whose processes together pass h_vmem with
    SIGKILL and reports its peak as ``maxvmem`` (one process alone gets MemoryError instead, from
    the address-space limit, and exits 1: that is no kill); Slurm says ``OUT_OF_MEMORY`` where
    cgroups enforce memory, and where slurmstepd polls it the job ends aborted with slurmstepd's
    "exceeded memory limit (peak > limit)" in its stderr. A worker that ended on its own (exited)
    with a high peak was not killed, so it is not counted here.
    """
    found = _SLURM_OVER_MEMORY.search(stderr_tail) if info.aborted or info.signaled else None
    if found:
        return _memory_ending(int(found.group(2)), int(found.group(1)))
    peak = _peak(info.resource_usage)
    if info.state == "OUT_OF_MEMORY":
        return _memory_ending(memory_limit, peak)
    if (memory_limit is not None and peak is not None and peak > memory_limit
            and (info.aborted or (info.signaled and info.signal in ("SIGKILL", "KILL", "9")))):
        return _memory_ending(memory_limit, peak)
    return None


def _peak(usage: dict[str, Any]) -> int | None:
    """The peak memory in the scheduler's accounting: Grid Engine's maxvmem (bytes); None if unknown or 0."""
    try:
        value = int(float(usage["maxvmem"]))
    except (KeyError, TypeError, ValueError):
        return None
    return value if value > 0 else None


def _memory_ending(limit: int | None, peak: int | None) -> Ending:
    asked = f"asked {format_size(limit)}" if limit else "over its memory request"
    measured = f", peak {format_size(peak)}" if peak else ""
    return Ending(Cause.MEMORY, f"killed for memory: {asked}{measured} (ask for more with memory=)", False)


def format_size(size: int) -> str:
    """Bytes as a short binary size: 1G, 1.3G, 300M, 512K."""
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + unit
    return f"{size}B"


def is_retryable(cause: Cause, exception_types: tuple[str, ...] = (), retry_exceptions: tuple[str, ...] = ()) -> bool:
    """Whether an attempt that ended in ``cause`` may be tried again (budget permitting).

    ``exception_types`` are the qualified names of the raised exception's classes (its MRO), and
    ``retry_exceptions`` the qualified names the user asked to retry.
    """
    if cause in INFRASTRUCTURE_CAUSES:
        return True
    if cause is Cause.EXCEPTION:
        return any(name in retry_exceptions for name in exception_types)
    return False
