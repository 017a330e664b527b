"""The size limits the package keeps so that each piece reads in one sitting: no class over 250
lines, no function over 60."""
from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "sheepdog_drmaa"
LONGEST_CLASS = 250
LONGEST_FUNCTION = 60


def test_no_class_over_250_lines_and_no_function_over_60() -> None:
    too_long = []
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 20
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                limit = LONGEST_CLASS
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                limit = LONGEST_FUNCTION
            else:
                continue
            assert node.end_lineno is not None
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                too_long.append(f"{path.relative_to(PACKAGE.parent)}: {node.name} is {lines} lines (limit {limit})")
    assert not too_long, "\n".join(too_long)
