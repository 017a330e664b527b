"""Opening the process's DRMAA session after a failed open, with a stand-in for the drmaa module: the
library's state is what the test sets up, which a real scheduler shows only now and then (after a
qmaster restart: "can't resolve host name", then "existing DRMAA session" for every later open)."""
from __future__ import annotations

import time
import types
from typing import Any

import pytest

from sheepdog_drmaa.backends import drmaa as drmaa_backend
from sheepdog_drmaa.errors import BackendUnavailable


class Library:
    """What libdrmaa believes: whether a session is open, and how the next calls end."""

    def __init__(self, failed_exits: int) -> None:
        self.open = False
        self.first = True
        self.failed_exits = failed_exits  # drmaa_exit calls that fail before one gets through
        self.inits = 0


def fake_drmaa(library: Library) -> Any:
    class DrmaaException(Exception):
        pass

    class AlreadyActiveSessionException(DrmaaException):
        pass

    class DrmCommunicationException(DrmaaException):
        pass

    class Session:
        drmaaImplementation = "Son of Grid Engine"
        drmsInfo = "SGE"

        def initialize(self) -> None:
            library.inits += 1
            if library.open:
                raise AlreadyActiveSessionException("code 11: Initialization failed due to existing DRMAA session.")
            library.open = True
            if library.first:
                library.first = False
                raise DrmCommunicationException("code 1: Unable to open a connection to the qmaster: "
                                                "can't resolve host name")

        def exit(self) -> None:
            if library.failed_exits:
                library.failed_exits -= 1
                raise DrmaaException("code 2: exit failed")
            library.open = False

    errors = types.SimpleNamespace(DrmaaException=DrmaaException, DrmCommunicationException=DrmCommunicationException,
                                   AlreadyActiveSessionException=AlreadyActiveSessionException,
                                   TryLaterException=DrmCommunicationException)
    return types.SimpleNamespace(Session=Session, errors=errors)


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the backoff between opens


@pytest.mark.parametrize("failed_exits", [0, 1, 3])
def test_a_failed_open_whose_exit_also_failed_is_closed_and_the_session_opened_again(failed_exits: int) -> None:
    library = Library(failed_exits)
    shared = drmaa_backend._SharedSession()
    session = shared.open(fake_drmaa(library), outage_wait=60)
    assert session is not None and library.open and shared.users == 1 and not shared.half_open
    assert library.inits == 2 + failed_exits


def test_an_existing_session_of_the_callers_own_is_refused_not_closed() -> None:
    library = Library(0)
    library.open, library.first = True, False  # opened by other code in this process
    with pytest.raises(BackendUnavailable, match="already holds a DRMAA session"):
        drmaa_backend._SharedSession().open(fake_drmaa(library), outage_wait=60)
    assert library.open
