"""The package's shape: no function or method in mvector/ is longer than 100 lines (a long function is split into
named steps), and the service's create_app stays a short assembler."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mvector"
MAX_LINES = 100


def function_lengths(path: Path) -> list[tuple[str, int, int]]:
    """``(qualified name, first line, length in lines)`` of every function in ``path``, nested ones included
    (a function's length counts its decorators, its docstring and the functions inside it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    found.append((name, child.lineno, child.end_lineno - first + 1))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def test_function_lengths_counts_nested_functions_and_decorators(tmp_path):
    source = """
def outer():
    @dec
    def inner():
        pass
    return inner


class K:
    def m(self):
        x = 1
        return x
"""
    (tmp_path / "m.py").write_text(source.lstrip("\n"))
    assert function_lengths(tmp_path / "m.py") == [("outer", 1, 5), ("outer.inner", 3, 3), ("K.m", 9, 3)]


def test_no_function_in_the_package_is_longer_than_100_lines():
    too_long = [
        f"{path.relative_to(PACKAGE.parent)}:{line} {name} is {length} lines"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name, line, length in function_lengths(path)
        if length > MAX_LINES
    ]
    assert not too_long, f"functions over {MAX_LINES} lines (split them into named steps):\n" + "\n".join(too_long)


def test_create_app_is_a_short_assembler():
    lengths = {name: length for name, _, length in function_lengths(PACKAGE / "service" / "app.py")}
    assert lengths["create_app"] < 80, lengths
