"""No import cycle in the project, hidden or not; ``models`` stands alone (design.md, "Layers").

Every module of each package is read with ``ast`` (nothing is imported), and every import it
names is an edge: at the top, inside functions, under ``if TYPE_CHECKING:``, relative ones
resolved. An edge goes to the most specific module named (``from .a import b`` is ``a.b`` where
that is a module, else ``a``: the package's ``__init__`` for a package), and to every package
``__init__`` that import runs first (``a`` for ``a.b``, unless the importer is inside ``a``
already). A cycle hidden by a function-level import is still a cycle: it only moves the failure
to the first call.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "service")
MODELS_NEVER_IMPORT = ("service", "fastapi", "starlette", "redis", "uvicorn", "httpx")


def modules(package: str, root: Path = ROOT) -> dict[str, Path]:
    """Dotted name → file, for every module of ``package`` (its ``__init__`` is the package)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported(name: str, path: Path, known: set[str] | dict[str, Path]
             ) -> Iterator[tuple[str, int]]:
    """``(module, line)`` for every import in ``path`` (module ``name``), anywhere in it:
    ``import a.b`` names the longest known prefix of ``a.b``; ``from a import x`` names ``a.x``
    where that is a known module, else ``a`` (its nearest known prefix); relative imports are
    resolved first. Names outside ``known`` come back as written (third-party modules)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield _nearest(alias.name, known), node.lineno
        elif isinstance(node, ast.ImportFrom):
            stem = node.module or ""
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                stem = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{stem}.{alias.name}"
                yield (sub if sub in known else _nearest(stem, known)), node.lineno


def _nearest(dotted: str, known: set[str] | dict[str, Path]) -> str:
    """The longest prefix of ``dotted`` that is a known module, else ``dotted`` itself."""
    parts = dotted.split(".")
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts) if parts else dotted


def graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES
          ) -> dict[str, dict[str, int]]:
    """module → {module of these packages it imports: first line that does}."""
    known: dict[str, Path] = {}
    for package in packages:
        known.update(modules(package, root))
    edges: dict[str, dict[str, int]] = {}
    for name, path in known.items():
        out = edges.setdefault(name, {})
        for target, line in imported(name, path, known):
            if target in known and target != name:
                out.setdefault(target, line)
                for parent in _packages_run_first(name, target):
                    out.setdefault(parent, line)
    return edges


def _packages_run_first(importer: str, target: str) -> list[str]:
    """The packages whose ``__init__`` importing ``target`` runs first: its ancestors, except
    those of ``importer`` (already being imported when ``importer`` runs)."""
    mine = importer.split(".")
    parts = target.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))
            if parts[:k] != mine[:k]]


def find_cycle(edges: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle (``[a, b, ..., a]``) if there is any, by depth-first search."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, {})):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def describe(cycle: list[str], edges: dict[str, dict[str, int]]) -> str:
    steps = (f"{a} (line {edges[a][b]})" for a, b in itertools.pairwise(cycle))
    return " -> ".join(steps) + f" -> {cycle[-1]}"


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_import_graph_sees_hidden_imports(tmp_path: Path) -> None:
    """The walk finds imports inside functions and under ``if TYPE_CHECKING:``, and resolves
    relative ones: a cycle made only of those is found."""
    write(tmp_path, {"pkg/__init__.py": "",
                     "pkg/a.py": "def f():\n    from .b import g\n    return g\n",
                     "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                 "    from . import a\n"})
    assert find_cycle(graph(tmp_path, ("pkg",))) == ["pkg.a", "pkg.b", "pkg.a"]


def test_the_import_graph_sees_package_inits_run_first(tmp_path: Path) -> None:
    """``from ..fast import kernel`` runs ``fast/__init__`` first: if that imports something
    that imports the importer, it is a cycle (``pkg.cells`` half-built when it is needed)."""
    write(tmp_path, {"pkg/__init__.py": "", "pkg/fast/kernel.py": "",
                     "pkg/fast/__init__.py": "from . import clone\n",
                     "pkg/fast/clone.py": "from ..network import Network\n",
                     "pkg/network.py": "from .cells import Stack\n",
                     "pkg/cells.py": "from .fast import kernel\n"})
    assert find_cycle(graph(tmp_path, ("pkg",))) == [
        "pkg.cells", "pkg.fast", "pkg.fast.clone", "pkg.network", "pkg.cells"]
    write(tmp_path, {"pkg/fast/__init__.py": '"""machinery: import its modules directly"""\n'})
    assert find_cycle(graph(tmp_path, ("pkg",))) is None


def test_no_import_cycle_in_the_project() -> None:
    edges = graph()
    assert any(name.startswith("models.") for name in edges)
    cycle = find_cycle(edges)
    assert cycle is None, f"import cycle: {describe(cycle, edges)}"


@pytest.mark.parametrize("name", sorted(modules("models")))
def test_models_never_import_the_service_or_its_transport(name: str) -> None:
    path = modules("models")[name]
    for target, line in imported(name, path, modules("models")):
        top = target.split(".")[0]
        assert top not in MODELS_NEVER_IMPORT, f"{path.relative_to(ROOT)}:{line} imports {target}"


@pytest.mark.parametrize("name", sorted(modules("models")))
def test_models_take_no_private_name_from_another_module(name: str) -> None:
    """A name with a leading underscore belongs to its module: a module that needs another's
    private piece shows a cut in the wrong place (style.md: split by concept)."""
    path = modules("models")[name]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(
                PACKAGES)):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{path.relative_to(ROOT)}:{node.lineno} imports {private}"
