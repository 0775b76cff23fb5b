"""The layers of ``design.md`` ("Layers and the way data flows"), checked on the source: nothing
below ``service/api`` knows HTTP, and no module outside ``service/redis`` spells a Redis key."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "service"
HTTP_MODULES = ("fastapi", "starlette", "uvicorn", "httpx", "http")
HTTP_NAMES = {"HTTPException", "status_code", "ApiError", "Retry-After", "JSONResponse"}


def _sources(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


# the command line starts the service; feed, client and remote talk to it over HTTP, from outside
CLIENTS = ("cli.py", "feed.py", "client.py", "remote.py")


def _below_api() -> list[Path]:
    """Every service module but the HTTP layer, the command line that starts it and the
    clients that talk to it over HTTP, from outside (``streamnorm feed``, ``service.client``,
    ``service.remote``)."""
    return [p for p in _sources(SERVICE)
            if "api" not in p.relative_to(SERVICE).parts and p.name not in CLIENTS]


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST, module: str = "") -> set[str]:
    """Every module ``tree`` imports, relative imports resolved against ``module``."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = module.split(".")
            if node.level:
                base = base[:len(base) - node.level] if module else []
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)
    return out


def _words(tree: ast.AST) -> set[str]:
    """Names, attributes and string constants of a module."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.add(node.value)
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes (their words are prose, not code)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) \
                and node.body and isinstance(node.body[0], ast.Expr) \
                and isinstance(node.body[0].value, ast.Constant):
            out.add(id(node.body[0].value))
    return out


def test_the_layers_exist_as_folders() -> None:
    for layer in ("api", "engine", "redis"):
        assert (SERVICE / layer / "__init__.py").is_file(), layer
    assert len(_below_api()) >= 10  # the walk below finds the modules it checks


@pytest.mark.parametrize("path", _below_api(), ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_below_the_api_knows_http(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported = _imports(tree, _module(path) if path.name != "__init__.py"
                        else _module(path) + ".__init__")
    http = {m for m in imported if m.split(".")[0] in HTTP_MODULES}
    assert not http, f"{path.name} imports {sorted(http)}"
    if path.name != "worker.py":  # the stream's edge shares the learn body's schema
        api = {m for m in imported if m == "service.api" or m.startswith("service.api.")}
        assert not api, f"{path.name} imports the HTTP layer: {sorted(api)}"
    words = _words(tree) & HTTP_NAMES
    assert not words, f"{path.name} uses {sorted(words)}"


@pytest.mark.parametrize("path", [p for p in _sources(ROOT / "service") + _sources(ROOT / "models")
                                  if "redis" not in p.relative_to(ROOT).parts],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_outside_the_redis_layer_spells_a_key(path: Path) -> None:
    tree = ast.parse(path.read_text())
    prose = _docstrings(tree)
    spelled = [node.value for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and isinstance(node.value, str)
               and id(node) not in prose and node.value.startswith("sn:")]
    f_strings = [ast.unparse(node) for node in ast.walk(tree)
                 if isinstance(node, ast.JoinedStr) and "sn:" in ast.unparse(node)]
    assert not spelled and not f_strings, (path.name, spelled, f_strings)


def test_the_check_finds_a_spelled_key_and_an_http_import(tmp_path: Path) -> None:
    """The two checks above can fail: they see what they look for."""
    bad = ast.parse('import fastapi\nfrom ..api.errors import ApiError\n'
                    'KEY = f"sn:{{{name}}}:meta"\ndef f():\n    raise ApiError(404)\n')
    assert _imports(bad, "service.engine.replica") == {
        "fastapi", "service.api.errors", "service.api.errors.ApiError"}
    assert "ApiError" in _words(bad)
    assert any("sn:" in ast.unparse(n) for n in ast.walk(bad) if isinstance(n, ast.JoinedStr))
