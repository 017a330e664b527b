"""The classification table, row by row."""
import pytest

from sheepdog_drmaa.failures import Cause, ExitInfo, classify, is_retryable


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
])
def test_classify(info, cause, clean, words):
    ending = classify(info)
    assert ending.cause is cause
    assert ending.clean is clean
    assert words in ending.summary


@pytest.mark.parametrize("cause", [Cause.EXIT, Cause.SIGNAL, Cause.ABORTED, Cause.LOST, Cause.TIMEOUT])
def test_infrastructure_causes_are_retried(cause):
    assert is_retryable(cause)


def test_exceptions_are_final_unless_asked():
    types = ("builtins.ValueError", "builtins.Exception", "builtins.BaseException", "builtins.object")
    assert not is_retryable(Cause.EXCEPTION, types)
    assert is_retryable(Cause.EXCEPTION, types, ("builtins.Exception",))
    assert not is_retryable(Cause.EXCEPTION, types, ("builtins.KeyError",))
    assert not is_retryable(Cause.RESULT)
    assert not is_retryable(Cause.CANCELLED)
