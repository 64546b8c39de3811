#!/usr/bin/env python
"""Fail if the modules of a package import each other in a cycle at import time.

Usage: ``python scripts/check_import_cycles.py [PACKAGE_DIR]`` (default: ``hierps/`` next to
this script's directory). Prints every cycle and exits 1 if there is one, else exits 0.

Every module under the package is parsed with :mod:`ast`. An edge ``a -> b`` means that running
``a``'s module body imports ``b``:

* ``import pkg.x.y`` and ``from pkg.x.y import name`` (and their relative forms) count;
* ``from pkg.x import name`` points at the submodule ``pkg.x.name`` when that module exists,
  otherwise at ``pkg.x`` (a package's ``__init__`` is the node ``pkg.x``);
* imports inside functions and lambdas and under ``if TYPE_CHECKING:`` do not run at import
  time and are ignored; those in class bodies, ``try`` and other ``if`` blocks count.

Cycles are the strongly connected components of that graph (Tarjan's algorithm) with more than
one module, or one module that imports itself.
"""

from __future__ import annotations

import ast
import itertools
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# (importing module, imported module) -> line of the first such import in the importing module.
Edges = dict[tuple[str, str], int]


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool


def find_modules(package_dir: Path) -> dict[str, Module]:
    """Every ``.py`` file under ``package_dir``, keyed by its dotted module name."""
    root = package_dir.parent
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = Module(".".join(parts), path, is_package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_imports(nodes: Iterable[ast.AST]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements among ``nodes`` that run when the module body runs."""
    for node in nodes:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue  # their bodies run when called, not at import
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_time_imports(node.orelse)
        else:
            yield from _import_time_imports(ast.iter_child_nodes(node))


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module a (possibly relative) ``from ... import`` names."""
    if node.level == 0:
        return node.module or ""
    parts = module.name.split(".")
    # A package's own name is its __init__; ``from . import x`` there means the package itself.
    base = parts if module.is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph(modules: dict[str, Module]) -> Edges:
    """The import-time edges between the given modules."""
    edges: Edges = {}

    def add(source: str, target: str, line: int) -> None:
        if target in modules:
            edges.setdefault((source, target), line)

    for module in modules.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
        for node in _import_time_imports(tree.body):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(module.name, alias.name, node.lineno)
                continue
            target = _absolute(module, node)
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                add(module.name, submodule if submodule in modules else target, node.lineno)
    return edges


def strongly_connected_components(nodes: list[str], edges: Edges) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on deep import chains)."""
    successors: dict[str, list[str]] = {node: [] for node in nodes}
    for source, target in edges:
        successors[source].append(target)
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(successors[start]))]
        index[start] = lowlink[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = lowlink[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors[child])))
                elif child in on_stack:
                    lowlink[node] = min(lowlink[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                lowlink[parent] = min(lowlink[parent], lowlink[node])
            if lowlink[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def shortest_cycle(component: list[str], edges: Edges) -> list[str]:
    """A shortest cycle through the first module of a component, closed (first == last)."""
    members = set(component)
    successors: dict[str, list[str]] = {member: [] for member in component}
    for source, target in edges:
        if source in members and target in members:
            successors[source].append(target)
    start = component[0]
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in successors[node]:
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if target not in previous:
                previous[target] = node
                queue.append(target)
    raise AssertionError(f"no cycle through {start}")  # a cyclic component always has one


def find_cycles(package_dir: Path) -> tuple[list[list[str]], Edges, dict[str, Module]]:
    """The cyclic components of the package's import graph, with the graph."""
    modules = find_modules(package_dir)
    edges = import_graph(modules)
    components = strongly_connected_components(sorted(modules), edges)
    cyclic = [c for c in components if len(c) > 1 or (c[0], c[0]) in edges]
    return sorted(cyclic), edges, modules


def main(argv: list[str]) -> int:
    default = Path(__file__).resolve().parent.parent / "hierps"
    package_dir = Path(argv[0]) if argv else default
    if not (package_dir / "__init__.py").is_file():
        print(f"{package_dir} is not a package (no __init__.py)", file=sys.stderr)
        return 2
    cycles, edges, modules = find_cycles(package_dir)
    if not cycles:
        print(f"no import cycles among {len(modules)} modules of {package_dir.name}")
        return 0
    root = package_dir.parent
    for component in cycles:
        cycle = shortest_cycle(component, edges)
        print(f"import cycle among {len(component)} modules: {', '.join(component)}")
        print("  " + " -> ".join(cycle))
        for source, target in itertools.pairwise(cycle):
            path = modules[source].path.relative_to(root)
            print(f"    {path}:{edges[source, target]} imports {target}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
