"""The rules of docs/ARCHITECTURE.md, as tests: each folder depends only downward, and each breaks here.

- the guard (guard/) imports nothing of the package but itself, and only the standard library;
- no backend package imports another backend's; nothing outside backend/ imports a backend (the registry
  names them by string);
- backend/ imports no screen library (backends return lines and data);
- the core (bottle, manifest, git, hostfs, identity, guard_inputs, images, engine) imports no backend, no
  work layer and no CLI; the work layer imports no CLI; nothing but cli/ imports the CLI;
- the package's root holds only what every part uses (errors, process, identity, terminal);
- no module is over 450 lines without its reason at its top; no import loop at module level;
- a command's JSON answer is read by a typed row (engine's rows, kubernetes/rows.py), never as raw dicts;
- a test backend that implements only the ABC runs the whole lifecycle, and one that builds its images
  through the neutral builder imports nothing of any other backend.
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


STDLIB_OK = {"__future__"}
CORE = ("bottle", "manifest", "git", "hostfs", "identity.py", "guard_inputs", "images", "engine")
ROOT_MODULES = {"__init__.py", "__main__.py", "errors.py", "process.py", "identity.py", "terminal.py"}
SIZE_LIMIT = 450


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(("claude_bottle", *parts))


def test_the_guard_imports_only_stdlib_and_itself() -> None:
    for path in files("guard"):
        for mod in imports(path):
            top = mod.split(".")[0]
            ok = top in sys.stdlib_module_names or top in STDLIB_OK or mod.startswith("claude_bottle.guard.")
            ok = ok or mod in ("claude_bottle.guard", "claude_bottle")
            assert ok, f"{path.relative_to(PKG)} imports {mod}"


def test_no_backend_imports_another_backend() -> None:
    backends = sorted(d.name for d in (PKG / "backend").iterdir() if (d / "__init__.py").exists())
    for name in backends:
        others = tuple(f"claude_bottle.backend.{o}" for o in backends if o != name)
        for path in files(f"backend/{name}"):
            for mod in imports(path):
                assert not mod.startswith(others), f"{path.relative_to(PKG)} imports {mod}"
    for path in files():
        rel = path.relative_to(PKG)
        if rel.parts[0] == "backend":
            continue
        for mod in imports(path):
            assert not mod.startswith(tuple(f"claude_bottle.backend.{b}" for b in backends)), f"{rel} imports {mod}"


def test_backends_know_no_screen() -> None:
    for path in files("backend"):
        for mod in imports(path):
            assert mod.split(".")[0] not in SCREEN, f"{path.relative_to(PKG)} imports {mod}"


@pytest.mark.parametrize("module", CORE)
def test_the_core_imports_no_backend_no_work_layer_and_no_cli(module: str) -> None:
    for path in [PKG / module] if module.endswith(".py") else files(module):
        for mod in imports(path):
            bad = mod.startswith(("claude_bottle.backend", "claude_bottle.cli", "claude_bottle.work"))
            assert not bad, f"{path.relative_to(PKG)} imports {mod}"


def test_the_work_layer_imports_no_cli() -> None:
    for path in files("work"):
        for mod in imports(path):
            assert not mod.startswith("claude_bottle.cli"), f"{path.relative_to(PKG)} imports {mod}"


def test_nothing_but_the_cli_imports_the_cli() -> None:
    for path in files():
        rel = path.relative_to(PKG)
        if rel.parts[0] in ("cli",) or rel.name == "__main__.py":
            continue
        for mod in imports(path):
            assert not mod.startswith("claude_bottle.cli"), f"{rel} imports {mod}"


def test_the_root_holds_only_what_every_part_uses() -> None:
    loose = sorted(p.name for p in PKG.glob("*.py") if p.name not in ROOT_MODULES)
    assert loose == [], f"modules at the package's root that belong in a room of their own: {loose}"


def test_no_module_is_over_the_size_limit_without_its_reason() -> None:
    for path in files():
        text = path.read_text()
        lines = text.count("\n")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if lines > SIZE_LIMIT:
            assert "450 lines" in doc, f"{path.relative_to(PKG)}: {lines} lines and no reason at its top"


def test_a_commands_json_is_read_by_a_typed_row() -> None:
    """Engines' and clusters' JSON answers become typed rows (engine.PsRow, kubernetes/rows.py) in one
    place each: nothing outside those decodes a command's output itself."""
    for path in files():
        if path.name == "rows.py" or path.relative_to(PKG).parts[0] == "guard":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("json.loads", "loads") and node.args:
                arg = node.args[0]
                raw = isinstance(arg, ast.Attribute) and arg.attr in ("stdout", "stdout_bytes")
                assert not raw, f"{path.relative_to(PKG)}:{node.lineno} decodes a command's JSON: give it a row type"


def _runtime_imports(path: Path) -> set[str]:
    """What a module imports when it runs, at its top or inside a function (not what it names for type
    checking only): a loop through a function-local import is a loop all the same."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(sub) for sub in ast.walk(node)}
    out: set[str] = set()
    for sub in ast.walk(tree):
        if id(sub) in skip:
            continue
        if isinstance(sub, ast.Import):
            out |= {a.name for a in sub.names}
        elif isinstance(sub, ast.ImportFrom) and sub.module:
            out.add(sub.module)
            out |= {f"{sub.module}.{a.name}" for a in sub.names}
    return out


def test_no_import_loop() -> None:
    modules = {module_name(p): p for p in files()}
    graph = {m: {d for d in _runtime_imports(p) if d in modules and d != m} for m, p in modules.items()}
    # A package's __init__ importing its own submodule is not a loop through the package.
    for m, deps in graph.items():
        graph[m] = {d for d in deps if not (m.startswith(d + ".") and modules[d].name == "__init__.py")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                loop = [*path[path.index(d) :], d]
                raise AssertionError("import loop: " + " -> ".join(loop))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


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


def test_a_new_backend_builds_through_the_neutral_builder_and_imports_no_other_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tests/unit/neutral_backend.py: the files a new backend touches are its own; its images come from
    images/builder.py (the engine that builds them, an archive cached per image id)."""
    from claude_bottle import engine
    from claude_bottle.backend import _BACKENDS, get_bottle_backend
    from claude_bottle.bottle import Bottle
    from claude_bottle.manifest import parse_manifest

    from . import neutral_backend

    source = Path(neutral_backend.__file__)
    backends = tuple(f"claude_bottle.backend.{d.name}" for d in (PKG / "backend").iterdir() if d.is_dir())
    used = [m for m in _runtime_imports(source) if m.startswith(backends)]
    assert used == [], f"the test backend imports another backend: {used}"
    assert "claude_bottle.images.builder" in _runtime_imports(source) or "claude_bottle.images" in _runtime_imports(
        source
    )
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(engine, "image_ids", lambda names: {n: f"sha256:{abs(hash(n)):064x}"[:71] for n in names})

    def docker(*args: str, **_kw: object) -> object:
        calls.append(args)
        if args[:2] == ("save", "-o"):
            Path(args[2]).write_bytes(b"an image")
        return engine.process.Result(("docker", *args), 0, "", "")

    monkeypatch.setattr(engine, "docker", docker)
    monkeypatch.setitem(_BACKENDS, "neutral", "tests.unit.neutral_backend:NeutralBackend")
    ws = tmp_path / "ws"
    ws.mkdir()
    m = parse_manifest('[bottles.default]\nbackend = "neutral"\n[agents.claude]\n', path=ws / "claude-bottle.toml")
    backend = get_bottle_backend("neutral")
    bottle = Bottle.new(m, "claude", backend="neutral", modes=backend.workspace_modes)
    bottle.state.create()
    images = backend.prepare_images(plan=backend.plan(bottle=bottle), progress=lambda _line: None)
    assert set(images) == {"agent", "guard", "agent-archive"}
    assert Path(images["agent-archive"]).read_bytes() == b"an image"
    assert [c[0] for c in calls] == ["save"]  # warm images: nothing built, one archive made
