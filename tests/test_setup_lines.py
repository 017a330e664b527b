"""Set-up lines (setup=) on every backend: they run in the job's shell before the worker's Python
starts, what they export reaches f, an interpreter path with a space works, and a failing line
ends the sweep with WorkersCannotStart quoting the line, its number and its output."""
import os
import sys

import pytest

import sheepdog_drmaa
from sheepdog_drmaa import WorkersCannotStart


def from_setup(name):
    return os.environ.get(name), os.getcwd()


def test_setup_lines_run_in_the_jobs_shell_before_python(backend, store, tmp_path):
    # An interpreter whose path has a space in it (Grid Engine's DRMAA refuses such a command by itself).
    directory = tmp_path / "my python"
    directory.mkdir()
    (directory / "python").symlink_to(sys.executable)
    results = sheepdog_drmaa.map(from_setup, ["SHEEPDOG_TEST_SETUP"], backend=backend, store=store, progress=False,
                                 python=str(directory / "python"),
                                 setup=["export SHEEPDOG_TEST_SETUP=\"it's set up\"", f"cd '{tmp_path}'",
                                        "echo a line of set-up output"])
    assert results == [("it's set up", str(tmp_path))]


def test_a_failing_setup_line_is_quoted_with_its_output(backend, store):
    with pytest.raises(WorkersCannotStart) as caught:
        sheepdog_drmaa.map(abs, [1], backend=backend, store=store, progress=False,
                           setup=["true", "echo before; no-such-command-sheepdog --flag"])
    message = str(caught.value)
    assert "status 72 (a set-up line failed" in message
    assert "set-up line 2 failed with status 127: echo before; no-such-command-sheepdog --flag" in message
    assert "before" in message and "no-such-command-sheepdog: not found" in message
