"""Stopping a sweep's client signals only a process shown to be that client: pid and start time both
match its claim. A claim without a start time (as sheepdog_drmaa 0.1.0 wrote them) names a pid that
may be anyone's now: cancel leaves that process alone and says so."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import sheepdog_drmaa
from sheepdog_drmaa import claims
from sheepdog_drmaa.model import Claim
from sheepdog_drmaa.store import Store

# Says "ready" once its handlers are set, then each signal it gets; ends after SIGUSR1 (the test's
# own, sent last) or, when asked to, after SIGINT.
LISTENER = """
import signal, sys
def heard(signum, frame):
    print(signal.Signals(signum).name, flush=True)
    if signum == signal.SIGUSR1 or sys.argv[1] == "end-on-sigint":
        sys.exit(0)
signal.signal(signal.SIGINT, heard)
signal.signal(signal.SIGUSR1, heard)
print("ready", flush=True)
while True:
    signal.pause()
"""


def listener(mode: str = "keep-on") -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", LISTENER, mode], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    return process


def signals_heard(process: subprocess.Popen[str]) -> list[str]:
    """The signals ``process`` got, ending with the SIGUSR1 sent now: one sent to it earlier comes first."""
    process.send_signal(signal.SIGUSR1)
    out, _ = process.communicate(timeout=30)
    return out.split()


def cli_cancel(store: str, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sheepdog_drmaa", "cancel", name, "--store", store],
                          capture_output=True, text=True, timeout=120, cwd="/")


def test_cancel_never_signals_the_pid_of_a_claim_without_start_time(store: str) -> None:
    sheepdog_drmaa.map(abs, [-1], backend="local", store=store, progress=False, name="old")
    stranger = listener()
    try:
        database = Store(store)
        record = database.sweep_named("old")
        assert record is not None
        database.take_claim(record, Claim(pid=stranger.pid, host=socket.gethostname(),
                                          started=None, token=None, seen=time.time()))
        result = cli_cancel(store, "old")
        assert result.returncode == 0, result.stderr
        assert f"process {stranger.pid} on {socket.gethostname()} is not signalled" in result.stderr
        assert "no start time" in result.stderr
        reread = Store(store, readonly=True).sweep_named("old")
        assert reread is not None and reread.owner is None
        assert signals_heard(stranger) == ["SIGUSR1"]
    finally:
        stranger.kill()
        stranger.wait()


def test_a_process_shown_to_be_the_client_is_asked_to_stop_with_sigint() -> None:
    client = listener("end-on-sigint")
    try:
        claim = Claim(pid=client.pid, host=socket.gethostname(), started=claims.process_start(client.pid),
                      token="t", seen=time.time())
        assert claim.started is not None
        # It is this test's child: it would stay a zombie, alive to the claim's checks, until reaped here.
        assert claims.stop_client(claim, released=lambda: client.poll() is not None, timeout=30)
        out, _ = client.communicate(timeout=30)
        assert out.split() == ["SIGINT"]
    finally:
        client.kill()
        client.wait()
