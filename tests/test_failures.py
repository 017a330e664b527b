"""The classification table, row by row."""
from __future__ import annotations

import pytest

from sheepdog_drmaa.failures import classify, is_retryable
from sheepdog_drmaa.model import Cause, ExitInfo


@pytest.mark.parametrize("info, cause, clean, words", [
    (ExitInfo("1.1", exited=True, exit_status=0), Cause.EXIT, True, "status 0"),
    (ExitInfo("1.1", exited=True, exit_status=3), Cause.EXIT, False, "status 3"),
    (ExitInfo("1.1", exited=True, exit_status=98), Cause.EXIT, False, "reserves"),
    (ExitInfo("1.1", exited=True, exit_status=70), Cause.EXIT, False, "could not reach"),
    (ExitInfo("1.1", signaled=True, signal="SIGKILL"), Cause.SIGNAL, False, "SIGKILL"),
    (ExitInfo("1.1", signaled=True, signal="SIGSEGV", core_dumped=True), Cause.SIGNAL, False, "core dumped"),
    (ExitInfo("1.1", aborted=True), Cause.ABORTED, False, "aborted"),
    # Grid Engine may report an exit status for a job it deleted: aborted wins.
    (ExitInfo("1.1", aborted=True, exited=True, exit_status=137), Cause.ABORTED, False, "aborted"),
    (ExitInfo("1.1"), Cause.ABORTED, False, "without an exit status"),
    # Slurm's word for a job whose node failed: lost with its node, whatever slurm-drmaa's flags say.
    (ExitInfo("1_1", aborted=True, exited=True, exit_status=0, state="NODE_FAIL"), Cause.LOST, False, "NODE_FAIL"),
])
def test_classify(info: ExitInfo, cause: Cause, clean: bool, words: str) -> None:
    ending = classify(info)
    assert ending.cause is cause
    assert ending.clean is clean
    assert words in ending.summary


@pytest.mark.parametrize("cause", [Cause.EXIT, Cause.SIGNAL, Cause.ABORTED, Cause.LOST, Cause.TIMEOUT])
def test_infrastructure_causes_are_retried(cause: Cause) -> None:
    assert is_retryable(cause)


def test_exceptions_are_final_unless_asked() -> None:
    types = ("builtins.ValueError", "builtins.Exception", "builtins.BaseException", "builtins.object")
    assert not is_retryable(Cause.EXCEPTION, types)
    assert is_retryable(Cause.EXCEPTION, types, ("builtins.Exception",))
    assert not is_retryable(Cause.EXCEPTION, types, ("builtins.KeyError",))
    assert not is_retryable(Cause.RESULT)
    assert not is_retryable(Cause.CANCELLED)


@pytest.mark.parametrize("info, limit, tail, summary", [
    # Grid Engine: the job's processes together passed h_vmem; execd killed it and kept the peak.
    (ExitInfo("1.1", signaled=True, signal="SIGKILL", resource_usage={"maxvmem": "1395864371.0000"}), 1 << 30, "",
     "killed for memory: asked 1G, peak 1.3G"),
    # Slurm where slurmstepd polls memory (OverMemoryKill): aborted, its words in the job's stderr.
    (ExitInfo("7_1", aborted=True), 300 << 20, "slurmstepd-vm: error: StepId=7.batch exceeded memory limit "
     "(750981120 > 314572800), being killed", "killed for memory: asked 300M, peak 716.2M"),
    # Slurm with cgroups: the job's state says so; slurm-drmaa reports no usage.
    (ExitInfo("7_1", aborted=True, state="OUT_OF_MEMORY"), 2 << 30, "", "killed for memory: asked 2G"),
])
def test_a_worker_killed_for_memory_says_so_with_the_limit_and_the_peak(info: ExitInfo, limit: int, tail: str,
                                                                        summary: str) -> None:
    ending = classify(info, memory_limit=limit, stderr_tail=tail)
    assert ending.cause is Cause.MEMORY and summary in ending.summary and "memory=" in ending.summary
    assert is_retryable(Cause.MEMORY)


@pytest.mark.parametrize("info, limit", [
    # Killed, but below its limit: not memory (qdel -f, a node's OOM killer for another job).
    (ExitInfo("1.1", signaled=True, signal="SIGKILL", resource_usage={"maxvmem": "900000000"}), 1 << 30),
    # Over the limit but it exited on its own: whatever it was, the scheduler did not kill it.
    (ExitInfo("1.1", exited=True, exit_status=1, resource_usage={"maxvmem": "2000000000"}), 1 << 30),
    # No memory= and no words from the scheduler: nothing to compare with.
    (ExitInfo("1.1", signaled=True, signal="SIGKILL", resource_usage={"maxvmem": "2000000000"}), None),
])
def test_other_endings_are_not_taken_for_memory(info: ExitInfo, limit: int | None) -> None:
    assert classify(info, memory_limit=limit).cause is not Cause.MEMORY


def test_a_failed_setup_line_is_named_in_the_exit_summary() -> None:
    assert "set-up line failed" in classify(ExitInfo("1.1", exited=True, exit_status=72)).summary
