"""Set-up lines (setup=) on every backend: they run in the job's shell before the worker's Python
starts, what they export reaches f, an interpreter path with a space works, and a failing line
ends the sweep with WorkersCannotStart quoting the line, its number and its output."""
from __future__ import annotations

import glob
import os
import pathlib
import sys

import pytest
from helpers import BackendName

import sheepdog_drmaa
from sheepdog_drmaa import WorkersCannotStart


def from_setup(name: str) -> tuple[str | None, str]:
    return os.environ.get(name), os.getcwd()


def test_setup_lines_run_in_the_jobs_shell_before_python(backend: BackendName, store: str,
                                                         tmp_path: pathlib.Path) -> None:
    # An interpreter whose path has a space in it (Grid Engine's DRMAA refuses such a command by itself).
    directory = tmp_path / "my python"
    directory.mkdir()
    (directory / "python").symlink_to(sys.executable)
    results = sheepdog_drmaa.map(from_setup, ["SHEEPDOG_TEST_SETUP"], backend=backend, store=store, progress=False,
                                 python=str(directory / "python"),
                                 setup=["export SHEEPDOG_TEST_SETUP=\"it's set up\"", f"cd '{tmp_path}'",
                                        "echo a line of set-up output"])
    assert results == [("it's set up", str(tmp_path))]


def test_a_failing_setup_line_is_quoted_with_its_output(backend: BackendName, store: str) -> None:
    with pytest.raises(WorkersCannotStart) as caught:
        sheepdog_drmaa.map(abs, [1], backend=backend, store=store, progress=False,
                           setup=["true", "echo before; no-such-command-sheepdog --flag"])
    message = str(caught.value)
    assert "status 72 (a set-up line failed" in message
    assert "set-up line 2 failed with status 127: echo before; no-such-command-sheepdog --flag" in message
    assert "before" in message and "no-such-command-sheepdog: not found" in message
    assert "Fix set-up line 2 of setup=" in message and "python=" not in message


@pytest.mark.parametrize("line, status", [
    ("echo loading x; echo 'no module x' >&2; exit 3", 3),  # as in `module load x || exit 1`
    (". {script}", 4),                                       # a sourced script that exits
    ("echo all set; exit 0", 0),                             # the worker would never start
])
def test_a_setup_line_that_ends_the_shell_is_quoted_and_leaves_no_temporary_file(
        store: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, line: str, status: int) -> None:
    script = tmp_path / "site-env.sh"
    script.write_text("echo loading x\necho 'no module x' >&2\nexit 4\n")
    line = line.format(script=script)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))  # the local backend's workers inherit it; mktemp uses it
    with pytest.raises(WorkersCannotStart) as caught:
        sheepdog_drmaa.map(abs, [1], backend="local", store=store, progress=False, setup=["true", line])
    verdict = f"set-up line 2 ended the shell with status {status}: {line}"
    message = str(caught.value)
    assert "status 72 (a set-up line failed" in message and verdict in message
    assert "Fix set-up line 2 of setup=" in message and "python=" not in message
    stderr_files = glob.glob(os.path.join(os.path.dirname(store), "logs", "*", "*.err"))
    assert stderr_files
    for path in stderr_files:  # every worker's: the line's output, then its number, text and status
        with open(path) as handle:
            text = handle.read()
        assert text.index("loading x" if status else "all set") < text.index(verdict), text
        assert status == 0 or "no module x" in text
    assert os.listdir(temporary) == []


def test_setup_lines_that_succeed_leave_no_temporary_file(store: str, tmp_path: pathlib.Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    assert sheepdog_drmaa.map(abs, [-1], backend="local", store=store, progress=False, setup=["echo ok"]) == [1]
    assert os.listdir(temporary) == []
