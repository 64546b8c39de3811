"""docs/architecture.md and docs/math.md stay true to the code.

- The module map of docs/architecture.md §1 lists exactly the modules on disk.
- Every "docs/<name>.md §n" cited in the package or the tests is a section of that document.
- The layer table of docs/architecture.md §4 covers every module, and no module imports, at
  module level, a module of a higher layer.
- Subpackage ``__init__`` files import nothing, except the two user-facing namespaces.
- The MAP, balance, pooling and outcome modules import without PyMC, Bambi or matplotlib.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hierps"
DOCS = ROOT / "docs"
ARCHITECTURE = DOCS / "architecture.md"

# A module-map entry: a list item that starts with the module's path in backticks.
MAP_ENTRY = re.compile(r"^- `(hierps/[\w/]+\.py)`", re.MULTILINE)
# A citation of a numbered section, e.g. "docs/math.md §6" or "docs/architecture.md §4".
CITATION = re.compile(r"docs/(\w+)\.md §(\d+(?:\.\d+)*)")
# A numbered heading, e.g. "## §6 First-order conditions".
HEADING = re.compile(r"^#{1,6} §(\d+(?:\.\d+)*)\b", re.MULTILINE)
# The user-facing namespaces whose __init__ re-exports their modules' names.
REEXPORTING_PACKAGES = ("hierps/datasets/__init__.py", "hierps/plots/__init__.py")


def modules_on_disk() -> set[str]:
    return {path.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("*.py")}


def section(text: str, number: int) -> str:
    """The body of section ``§number`` of a document (up to the next level-2 heading)."""
    match = re.search(rf"^## §{number}\b.*?(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"docs/architecture.md has no section §{number}"
    return match.group(0)


def describe_difference(listed: set[str], on_disk: set[str]) -> str:
    lines = []
    if on_disk - listed:
        lines.append("modules on disk missing from docs/architecture.md §1 (add a line each):")
        lines += [f"  - `{path}` — …" for path in sorted(on_disk - listed)]
    if listed - on_disk:
        lines.append("modules listed in docs/architecture.md §1 that do not exist (remove them):")
        lines += [f"  {path}" for path in sorted(listed - on_disk)]
    return "\n".join(lines)


def test_module_map_lists_exactly_the_modules_on_disk():
    entries = MAP_ENTRY.findall(section(ARCHITECTURE.read_text(encoding="utf-8"), 1))
    duplicated = sorted({path for path in entries if entries.count(path) > 1})
    assert not duplicated, f"docs/architecture.md §1 lists these modules twice: {duplicated}"
    listed, on_disk = set(entries), modules_on_disk()
    assert listed == on_disk, describe_difference(listed, on_disk)


def test_map_entry_convention_reads_entries_and_nothing_else():
    text = "\n".join(
        [
            "- `hierps/a.py` — an entry",
            "- `hierps/sub/b.py` — an entry in a subpackage",
            "  - `hierps/nested.py` is indented prose, not an entry",
            "See `hierps/c.py` in a sentence.",
            "- the module `hierps/d.py`, not at the start of the item",
        ]
    )
    assert MAP_ENTRY.findall(text) == ["hierps/a.py", "hierps/sub/b.py"]
    message = describe_difference(
        {"hierps/a.py", "hierps/gone.py"}, {"hierps/a.py", "hierps/new.py"}
    )
    assert "`hierps/new.py`" in message and "hierps/gone.py" in message


def cited_sections() -> dict[tuple[str, str], list[str]]:
    """Every ``docs/<name>.md §n`` cited in the package and the tests, with where."""
    citations: dict[tuple[str, str], list[str]] = {}
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    for path in sorted(files):
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for document, label in CITATION.findall(line):
                where = f"{path.relative_to(ROOT).as_posix()}:{number}"
                citations.setdefault((document, label), []).append(where)
    return citations


def test_every_cited_section_exists():
    citations = cited_sections()
    # The package cites the mathematics it implements; a refactor must not lose that.
    assert any(document == "math" for document, _ in citations)
    missing = []
    for (document, label), places in sorted(citations.items()):
        path = DOCS / f"{document}.md"
        headings = HEADING.findall(path.read_text(encoding="utf-8")) if path.exists() else []
        if label not in headings:
            missing.append(f"docs/{document}.md §{label}, cited at {', '.join(places)}")
    assert not missing, "cited sections that do not exist:\n" + "\n".join(missing)


def test_documents_number_their_sections_in_order():
    for path in (DOCS / "math.md", ARCHITECTURE):
        numbers = [int(label) for label in HEADING.findall(path.read_text(encoding="utf-8"))]
        assert numbers == list(range(1, len(numbers) + 1)), f"{path.name}: sections {numbers}"


def layer_table() -> list[tuple[int, list[str]]]:
    """Rows ``(layer, module patterns)`` of the table in docs/architecture.md §4."""
    rows = []
    for line in section(ARCHITECTURE.read_text(encoding="utf-8"), 4).splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            rows.append((int(cells[0]), re.findall(r"`([\w/*]+)`", cells[1])))
    assert rows, "docs/architecture.md §4 has no layer table"
    return rows


def module_name(path: str) -> str:
    """``hierps/effects/estimands.py`` -> ``hierps.effects.estimands``; packages by name."""
    name = path.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def layers() -> dict[str, int]:
    """The layer of every module on disk; a module's own row beats its subpackage's ``x/*``."""
    exact: dict[str, int] = {}
    wildcard: dict[str, int] = {}
    for layer, patterns in layer_table():
        for pattern in patterns:
            target = wildcard if pattern.endswith("/*") else exact
            assert pattern not in target, f"docs/architecture.md §4 places {pattern} twice"
            target[pattern] = layer
    assigned = {}
    unassigned = []
    for path in sorted(modules_on_disk()):
        relative = path.removeprefix("hierps/").removesuffix(".py")
        if relative in exact:
            assigned[module_name(path)] = exact[relative]
            continue
        matches = [
            layer for pattern, layer in wildcard.items() if fnmatch.fnmatch(relative, pattern)
        ]
        if matches:
            assigned[module_name(path)] = matches[0]
        else:
            unassigned.append(path)
    assert not unassigned, f"modules without a layer in docs/architecture.md §4: {unassigned}"
    return assigned


def module_level_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every hierps import executed when the module is imported.

    Imports inside functions and under ``if TYPE_CHECKING:`` are left out.
    """
    found = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend((node.lineno, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == "hierps":  # from hierps import plots: the submodule
                    found.extend((node.lineno, f"hierps.{alias.name}") for alias in node.names)
                else:
                    found.append((node.lineno, node.module))
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.With):
                visit(node.body)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return [(line, name) for line, name in found if name.split(".")[0] == "hierps"]


def layering_violations(layer_of: dict[str, int]) -> list[str]:
    violations = []
    for path in sorted(modules_on_disk()):
        importer = module_name(path)
        for line, imported in module_level_imports(ROOT / path):
            # "hierps.x.y" may name a module, or an object of "hierps.x": take the longest module.
            target = imported
            while target not in layer_of and "." in target:
                target = target.rsplit(".", 1)[0]
            if layer_of.get(target, -1) > layer_of[importer]:
                violations.append(
                    f"{path}:{line} imports {target} (layer {layer_of[target]}) from layer "
                    f"{layer_of[importer]}; import it inside the function that needs it"
                )
    return violations


def test_module_level_imports_respect_the_layers():
    violations = layering_violations(layers())
    assert not violations, "imports that reach up a layer:\n" + "\n".join(violations)


def test_layering_check_flags_an_import_that_reaches_up():
    layer_of = layers()
    # Pretend the solver sat above the posterior: its import of the problem then reaches up.
    lowered = {**layer_of, "hierps.calibrated.newton": 0, "hierps.calibrated.problem": 5}
    violations = layering_violations(lowered)
    assert any(v.startswith("hierps/calibrated/newton.py:") for v in violations), violations


def test_subpackage_inits_import_nothing():
    importing = []
    for path in sorted(PACKAGE.glob("*/__init__.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative in REEXPORTING_PACKAGES:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imports = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")
        ]
        if imports:
            importing.append(f"{relative}:{imports[0].lineno}")
    assert not importing, (
        f"subpackage __init__ files that import (keep a docstring only): {importing}"
    )


@pytest.mark.parametrize(
    "module",
    [
        "hierps",
        "hierps.model",
        "hierps.calibrated.path",
        "hierps.balance.table",
        "hierps.effects.catt_pooling",
        "hierps.effects.outcome",
        "hierps.effects.comparison",
        "hierps.natstrat.weights",
        "hierps.workflow.storage",
    ],
)
def test_light_modules_import_without_heavy_libraries(module):
    heavy = ("pymc", "pytensor", "bambi", "matplotlib", "arviz")
    code = (
        f"import importlib, sys; importlib.import_module({module!r}); "
        f"print(' '.join(name for name in {heavy!r} if name in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "", f"importing {module} loads {result.stdout.strip()}"
