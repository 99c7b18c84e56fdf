"""The layering `config <- actors <- mediaserver` is a fact, checked by parsing every import."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Libraries that do I/O or run event loops: the call logic never touches them (STYLE.md §1).
IO_LIBRARIES = {
    "asyncio",
    "socket",
    "selectors",
    "ssl",
    "http",
    "urllib",
    "aiortc",
    "aioice",
    "av",
    "websockets",
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "aiohttp",
    "requests",
    "deepgram",
    "openai",
    "aiosqlite",
    "sqlite3",
    "subprocess",
}


def imported_modules(package: str) -> list[tuple[Path, int, str]]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(path, node.lineno, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((path, node.lineno, node.module))
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                found.append((path, node.lineno, package))  # relative: stays in the package
    return found


def violations(package: str, forbidden: set[str]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path, line, module in imported_modules(package)
        if module.split(".")[0] in forbidden
    ]


def test_config_imports_nothing_of_ours():
    assert violations("config", {"actors", "mediaserver"}) == []


def test_actors_import_config_only_and_no_io_library():
    assert violations("actors", {"mediaserver"} | IO_LIBRARIES) == []


@pytest.mark.parametrize("package", ["config", "actors", "mediaserver"])
def test_each_package_has_modules(package):
    assert imported_modules(package), f"{package} has no imports at all: is the walk broken?"


def test_the_check_catches_a_forbidden_import(tmp_path, monkeypatch):
    (tmp_path / "actors").mkdir()
    (tmp_path / "actors" / "bad.py").write_text("import asyncio\nfrom mediaserver.app import x\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = violations("actors", {"mediaserver"} | IO_LIBRARIES)
    assert found == ["actors/bad.py:1 imports asyncio", "actors/bad.py:2 imports mediaserver.app"]
