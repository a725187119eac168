"""The rules of docs/ARCHITECTURE.md, as tests: each folder depends only downward.

- the guard (egress/) imports nothing of the package but itself, and only the standard library;
- nothing outside backend/ imports a backend (the registry names them by string); Docker's knows no other;
- backend/ imports no screen library (backends return lines and data);
- manifest, state, paths, walk, runtime and the guard's host side import no backend and no CLI;
- nothing but cli/ imports the CLI;
- a test backend that implements only the ABC runs the whole lifecycle (see test_a_backend_needs_only_the_abc).
"""

from __future__ import annotations

import ast
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import claude_bottle

PKG = Path(claude_bottle.__file__).parent
SCREEN = {"rich", "curses", "tty", "termios", "readline"}


def imports(path: Path) -> Iterator[str]:
    """Every module a file imports, as absolute dotted names (relative imports resolved)."""
    package = ".".join(("claude_bottle", *path.relative_to(PKG).parent.parts))
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
                yield mod
                for alias in node.names:  # `from . import engine` names a module too
                    yield f"{mod}.{alias.name}"
            else:
                yield node.module or ""


def files(under: str = "") -> list[Path]:
    return sorted((PKG / under).rglob("*.py"))


def test_egress_imports_only_stdlib_and_itself() -> None:
    for path in files("egress"):
        for mod in imports(path):
            top = mod.split(".")[0]
            ok = top in sys.stdlib_module_names or top == "__future__" or mod.startswith("claude_bottle.guard")
            assert ok, f"{path.relative_to(PKG)} imports {mod}"


def test_only_backends_import_a_backend() -> None:
    """The core names backends by string. A backend may build on another's engine client (the smolmachines
    backend runs its sidecars and builds its images with Docker's, the Kubernetes backend builds its images
    with Docker's); Docker's knows no other."""
    others = ("claude_bottle.backend.smolmachines", "claude_bottle.backend.kubernetes")
    for path in files():
        rel = str(path.relative_to(PKG))
        for mod in imports(path):
            if rel.startswith(("backend/smolmachines", "backend/kubernetes")):
                assert not mod.startswith(tuple(o for o in others if not o.endswith(rel.split("/")[1]))), rel
                continue
            if rel.startswith("backend/docker"):
                assert not mod.startswith(others), f"{rel} imports {mod}"
                continue
            assert not mod.startswith(("claude_bottle.backend.docker", *others)), f"{rel} imports {mod}"


def test_backends_know_no_screen() -> None:
    for path in files("backend"):
        for mod in imports(path):
            assert mod.split(".")[0] not in SCREEN, f"{path.relative_to(PKG)} imports {mod}"


@pytest.mark.parametrize(
    "module",
    [
        "manifest.py",
        "state.py",
        "paths.py",
        "walk.py",
        "unpack.py",
        "runtime.py",
        "trust.py",
        "gitguard.py",
        "gitshape.py",
        "workcopy.py",
        "worktree.py",
        "guard",
    ],
)
def test_the_core_imports_no_backend_and_no_cli(module: str) -> None:
    for path in [PKG / module] if module.endswith(".py") else files(module):
        for mod in imports(path):
            assert not mod.startswith(("claude_bottle.backend", "claude_bottle.cli", "claude_bottle.work.lifecycle")), (
                f"{path.relative_to(PKG)} imports {mod}"
            )


def test_nothing_but_the_cli_imports_the_cli() -> None:
    for path in files():
        rel = path.relative_to(PKG)
        if rel.parts[0] in ("cli",) or rel.name == "__main__.py":
            continue
        for mod in imports(path):
            assert not mod.startswith("claude_bottle.cli"), f"{rel} imports {mod}"


def test_a_backend_needs_only_the_abc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/unit/fakes.py implements BottleBackend and nothing else; registered by name, it runs start, ls,
    exec, stop and cleanup end to end, and no file of the package names it."""
    from claude_bottle.backend import _BACKENDS
    from claude_bottle.bottle.state import bottle_home
    from claude_bottle.cli import main
    from claude_bottle.manifest.trust import trust_file

    from .fakes import FakeBackend

    for path in files():
        assert "FakeBackend" not in path.read_text() and "tests.unit" not in path.read_text(), path
    monkeypatch.setitem(_BACKENDS, "fake", "tests.unit.fakes:FakeBackend")
    monkeypatch.setitem(_BACKENDS, "docker", "tests.unit.fakes:FakeBackend")  # cleanup walks every backend
    FakeBackend.reset()
    proj = tmp_path / "p"
    proj.mkdir()
    (proj / "claude-bottle.toml").write_text('[bottles.default]\nbackend = "fake"\n[agents.claude]\n')
    trust_file(proj / "claude-bottle.toml", home=bottle_home())
    monkeypatch.chdir(proj)
    assert main(["start", "claude", "--detach", "--json"]) == 0
    assert main(["ls", "--json"]) == 0
    assert main(["exec", "claude", "--", "true"]) == 0
    assert main(["stop", "claude", "--rm"]) == 0
    FakeBackend.leftovers = {"stray-1"}
    assert main(["cleanup", "--yes"]) == 0
    assert FakeBackend.calls == [
        "plan", "images", "start", "wait", "exec true", "stop", "prepare_cleanup", "prepare_cleanup", "cleanup",
        "cleanup",
    ]  # fmt: skip
    assert FakeBackend.leftovers == set()
    assert json.loads(json.dumps(FakeBackend.live)) == {}
