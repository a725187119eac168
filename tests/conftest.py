"""Shared fixtures: every test gets its own state root and leaves os.environ as it found it."""

from __future__ import annotations

import os
import stat
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "bottle-home"
    monkeypatch.setenv("CLAUDE_BOTTLE_HOME", str(home))
    monkeypatch.delenv("CLAUDE_BOTTLE_BACKEND", raising=False)
    monkeypatch.delenv("CLAUDE_BOTTLE_NAMESPACE", raising=False)
    return home


FAKESMOL = Path(__file__).parent / "fakesmol"
_fake_smol: list[object] = []


@pytest.fixture(autouse=True)
def fake_smol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    """In every test process the smolmachines SDK is the fake (tests/fakesmol), its machines in this test's
    own file: no test reads or changes this host's real machine database. (A CLI run as a subprocess gets
    the fake by PYTHONPATH; see tests/integration.)"""
    import importlib.util

    from claude_bottle.backend.smolmachines import sdk

    if not _fake_smol:
        spec = importlib.util.spec_from_file_location("fakesmol_smol", FAKESMOL / "smol" / "__init__.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        _fake_smol.append(module)
    monkeypatch.setattr(sdk, "_module", _fake_smol[0])
    monkeypatch.setenv("FAKE_SMOL_DB", str(tmp_path / "smol" / "db.json"))
    for var in ("FAKE_SMOL_BOOT_FAIL", "FAKE_SMOL_EXEC", "FAKE_SMOL_UNAVAILABLE"):
        monkeypatch.delenv(var, raising=False)
    return _fake_smol[0]


@pytest.fixture(autouse=True)
def default_signals() -> Iterator[None]:
    """Every test starts with SIGTERM, SIGHUP and SIGINT as a terminal leaves them, whatever the runner
    inherited (`nohup` ignores SIGHUP; a shell ignores SIGINT in a command it starts in the background with
    `&`), and the CLI the tests start rightly keeps an ignored signal ignored."""
    import signal

    before = {sig: signal.signal(sig, signal.SIG_DFL) for sig in (signal.SIGTERM, signal.SIGHUP)}
    before[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)  # children: SIG_DFL
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


@pytest.fixture(autouse=True)
def environ_unchanged() -> Iterator[None]:
    def snapshot() -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}

    before = snapshot()
    yield
    assert snapshot() == before, "a test changed os.environ"


@pytest.fixture
def fake_exe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], Path]:
    """Put an executable NAME on PATH whose body is the given Python code (argv in sys.argv)."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")

    def make(name: str, body: str) -> Path:
        path = bindir / name
        path.write_text(f"#!{sys.executable}\nimport sys, os, json\n{textwrap.dedent(body)}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return path

    return make
