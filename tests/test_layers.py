"""The package layers hold: each imports only layers below it, and nothing imports the CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parent.parent / "runner"

# Lower rank first; a package may import its own modules and any package of lower rank.
RANK = {
    "errors": 0,
    "settings": 0,
    "timing": 1,
    "jobs": 2,
    "ductape": 3,
    "store": 3,
    "daemon": 4,
    "cli": 5,
}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "runner" or len(parts) < 2:
        return None
    return parts[1]


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:` (types only, no run-time import)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return [node for node in ast.walk(tree) if id(node) not in skipped]


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if layer_of(name) in RANK}


def modules() -> list[Path]:
    return sorted(p for p in RUNNER.rglob("*.py") if p.name != "__main__.py")


def own_layer(path: Path) -> str:
    rel = path.relative_to(RUNNER)
    return rel.parts[0].removesuffix(".py") if rel.parts[0] != "__init__.py" else "errors"


def test_every_module_lives_in_a_known_layer() -> None:
    for path in modules():
        assert own_layer(path) in RANK, f"{path} is outside the layers: add it to one"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(RUNNER)))
def test_imports_point_down(path: Path) -> None:
    mine = own_layer(path)
    for name in imports_of(path):
        theirs = layer_of(name)
        assert theirs is not None
        if theirs == mine:
            continue
        assert RANK[theirs] < RANK[mine], f"{path.relative_to(RUNNER)} ({mine}) imports {name}"


def test_nothing_imports_the_cli_but_the_entry_point() -> None:
    for path in RUNNER.rglob("*.py"):
        if own_layer(path) == "cli" or path.name == "__main__.py":
            continue
        assert not any(layer_of(n) == "cli" for n in imports_of(path)), path


def test_a_package_that_imports_upward_is_caught(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from runner.daemon.scheduler import Scheduler\n")
    assert layer_of(next(iter(imports_of(bad)))) == "daemon"


def test_every_package_says_what_it_owns_and_may_import() -> None:
    for package in (p for p in RUNNER.iterdir() if (p / "__init__.py").exists()):
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and "import" in doc, f"{package.name}/__init__.py must say what it may import"


def test_a_daemon_on_sqlite_does_not_load_the_postgresql_driver(tmp_path: Path) -> None:
    # psycopg is about 20 MiB of a daemon's resident memory (issue 12): it is loaded
    # when the state is a PostgreSQL DSN, and only then.
    code = (
        "import sys\n"
        "import runner.cli.main, runner.daemon.service, runner.store.postgres as pg\n"
        "from runner.store.sqlite import SqliteStore\n"
        f"SqliteStore({str(tmp_path / 's.sqlite3')!r}).close()\n"
        "assert pg.is_dsn('postgresql://x') and pg.display_dsn\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'psycopg'))\n"
        "pg.PostgresStore\n"
        "print('psycopg' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=RUNNER.parent
    ).stdout.split("\n")
    assert out[:2] == ["[]", "True"]
