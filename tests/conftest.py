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
