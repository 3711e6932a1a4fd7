"""The package's layers: imports go one way only (down the list in ARCHITECTURE.md), with no import circles.

Every ``import`` statement in every module counts, including imports inside functions (a deferred import is still
a dependency). A module's layer is the first entry of :data:`LAYERS` that its dotted name starts with.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mvector"

#: Top to bottom. A module may import from its own layer and from layers below it, never from one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("compat", ("mvector.trainer", "mvector.predict")),  # the original project's public paths (re-exports)
    ("cli", ("mvector.cli", "mvector.__main__")),
    ("service", ("mvector.service",)),
    ("demo", ("mvector.demo",)),
    ("training", ("mvector.training",)),
    ("inference", ("mvector.inference",)),
    ("store", ("mvector.store",)),
    ("evaluation", ("mvector.evaluation",)),
    ("export", ("mvector.export", "mvector.pretrained")),
    ("embedding", ("mvector.embedding",)),
    ("build", ("mvector.build",)),
    ("checkpoint", ("mvector.checkpoint",)),
    ("config", ("mvector.config",)),
    ("models", ("mvector.models", "mvector.optim")),
    ("features", ("mvector.features",)),
    ("data", ("mvector.data",)),
    ("audio", ("mvector.audio",)),
    ("base", ("mvector.registry", "mvector.errors", "mvector.utils", "mvector")),
]

def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(name: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{name} belongs to no layer")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mvector"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("mvector"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
    return found


def package_modules() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # Keep only names that are modules (``from mvector.x import y`` names a module only when y.py exists).
        deps = imports_of(path)
        graph[name] = {m for m in deps if m in modules and m != name}
    return graph


def test_no_import_goes_up_a_layer():
    upward = []
    for name, deps in package_modules().items():
        for dep in deps:
            if dep == "mvector":  # the package root only holds the version and lazy names
                continue
            if layer_of(dep) < layer_of(name):
                upward.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})")
    assert not upward, "imports that go up a layer:\n" + "\n".join(sorted(upward))


def test_no_import_circle():
    graph = package_modules()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if dep.startswith("mvector.") and dep in graph:
                if state.get(dep) == 1:
                    cycles.append(stack[stack.index(dep):] + [dep] if dep in stack else [node, dep])
                elif dep not in state:
                    visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # A package importing its own submodules (mvector.models -> mvector.models.tdnn) is not a circle.
    real = [c for c in cycles if not all(c[0].startswith(m) or m.startswith(c[0]) for m in c)]
    assert not real, "import circles:\n" + "\n".join(" -> ".join(c) for c in real)
