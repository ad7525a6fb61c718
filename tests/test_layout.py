"""The layout's rules, checked on the source (docs/architecture.md, the layout):

- payrail never imports its tooling (src/payrail_tools imports payrail, not the reverse);
- domain/ is pure: it imports no database driver, HTTP client or web framework;
- only entrypoints/ (and the wiring in bootstrap.py) depend on the ways in.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "payrail"
IO_MODULES = ("sqlalchemy", "asyncpg", "aiosqlite", "sqlite3", "httpx", "fastapi", "starlette")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(under: Path) -> list[Path]:
    return sorted(p for p in under.rglob("*.py") if "migrations" not in p.parts)


def test_payrail_never_imports_its_tooling():
    offenders = {
        str(p.relative_to(SRC)): sorted(n for n in _imports(p) if n.startswith("payrail_tools"))
        for p in _modules(SRC)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_domain_does_no_io():
    offenders = {
        str(p.relative_to(SRC)): sorted(n for n in _imports(p) if n.split(".")[0] in IO_MODULES)
        for p in _modules(SRC / "domain")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_ways_in_depend_on_the_ways_in():
    inner = [p for p in _modules(SRC) if "entrypoints" not in p.parts and p.name != "bootstrap.py"]
    offenders = {
        str(p.relative_to(SRC)): sorted(
            n for n in _imports(p) if n.startswith("payrail.entrypoints")
        )
        for p in inner
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_package_root_holds_only_its_surface_and_wiring():
    loose = sorted(p.name for p in SRC.glob("*.py"))
    assert loose == ["__init__.py", "bootstrap.py", "client.py", "config.py", "webhooks.py"]
