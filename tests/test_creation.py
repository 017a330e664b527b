"""Creating a sweep: arguments stored as cloudpickle would write them, whatever the fast path takes,
and every task stored whole across the insert statements (large arguments among them)."""
from __future__ import annotations

import dataclasses
import decimal
import enum
import fractions

import cloudpickle
import pytest

import sheepdog_drmaa
from sheepdog_drmaa import api
from sheepdog_drmaa.claims import for_this_process
from sheepdog_drmaa.model import NewSweep
from sheepdog_drmaa.store import INSERT_ROWS, LARGE_VALUE_BYTES, Store


class Colour(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Point:
    x: int


class Text(str):
    pass


PLAIN = [0, -1, 2 ** 70, -(2 ** 200), 1.5, float("inf"), float("nan"), -0.0, True, False, None, "", "é漢",
         b"", b"\x00\xff" * 300, "x" * 100_000, (), (1,), (1, "a", b"b", 2.0, None, True), ("same", "same")]
NOT_PLAIN = [[1, 2], {"a": 1}, {1}, frozenset({1}), ((1, 2), 3), (1, [2]), 1j, decimal.Decimal("1.5"),
             fractions.Fraction(1, 3), Colour.RED, Point(1), (Point(2),), Text("t"), (Text("t"),), bytearray(b"ab"),
             abs, (lambda x: x,), int, range(3)]


@pytest.mark.parametrize("value", PLAIN + NOT_PLAIN, ids=repr)
def test_an_argument_is_pickled_to_the_bytes_cloudpickle_writes(value: object) -> None:
    assert api._pickle_argument(value, 0) == cloudpickle.dumps(value, protocol=5)


def test_a_stored_arguments_digest_is_the_one_of_cloudpickle_bytes(store: str) -> None:
    """A named sweep stored by an earlier version (cloudpickle for every argument) still resumes."""
    args = [value for value in PLAIN + NOT_PLAIN if not callable(value)]
    results = sheepdog_drmaa.map(lambda *given: len(given), args, backend="local", store=store, progress=False,
                                 name="digest")
    assert results == [len(value) if isinstance(value, tuple) else 1 for value in args]
    database = Store(store, readonly=True)
    record = database.sweep_named("digest")
    assert record is not None
    expected = [cloudpickle.dumps(value, protocol=5) for value in args]
    assert [database.task_args(record.id, index) for index in range(len(args))] == expected
    assert record.args_digest == api._digest(expected)


@pytest.mark.parametrize("n", [1, INSERT_ROWS - 1, INSERT_ROWS, 2 * INSERT_ROWS + 7])
def test_every_task_is_stored_whole_across_insert_statements(store: str, n: int) -> None:
    database = Store(store)
    large = b"L" * (LARGE_VALUE_BYTES + 1)
    args = [large if index % 50 == 3 else f"argument {index}".encode() for index in range(n)]
    new = NewSweep(id="sweep", name=None, function=b"f", function_digest="d", args_digest="a", n_tasks=n, options={})
    database.create_sweep(new, iter(args), for_this_process())
    assert database.stored_task_count("sweep") == n
    assert [database.task_args("sweep", index) for index in range(n)] == args
    assert database.tasks_in_state("sweep", "pending") == list(range(n))
