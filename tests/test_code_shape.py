"""No function is longer than ~60 lines (issue 9's rule), docstrings not counted.

The rule keeps pipeline steps out of the callers and every step readable on one screen. The
Alembic migrations are exempt (a migration is a list of schema statements, written once).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOTS = ("src/mono_quant", "worker", "scheduler")
MAX_LINES = 60


def _functions():
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield path.relative_to(REPO), node


def _length(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from ``def`` to the last statement, without the docstring."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
            and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_no_function_is_longer_than_60_lines():
    long = [f"{path}:{node.lineno} {node.name} ({_length(node)} lines)"
            for path, node in _functions() if _length(node) > MAX_LINES]
    assert not long, "split these functions:\n" + "\n".join(long)


@pytest.mark.parametrize("source, expected", [
    ("def f():\n    '''doc\n    more'''\n    return 1\n", 2),
    ("def f():\n    x = 1\n    return x\n", 3),
])
def test_the_length_leaves_out_the_docstring(source, expected):
    node = ast.parse(source).body[0]
    assert _length(node) == expected
