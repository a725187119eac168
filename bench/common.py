"""Shared bench helpers: timing, a throwaway claude-bottle home, result rows."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    section: str
    name: str
    ours: float  # seconds (or the unit named in `unit`)
    baseline: float | None
    baseline_name: str
    unit: str = "s"
    goal: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.ours / self.baseline if self.baseline else None

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def p50(values: Sequence[float]) -> float:
    return statistics.median(values)


def timed(
    argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, check: bool = True
) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run(list(argv), env=env, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return elapsed, proc


def timed_fn(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Bottles:
    """claude-bottle in a throwaway home and project, driven as a user would (the console script)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="claude-bottle-bench-"))
        self.home = self.dir / "home"
        self.project = self.dir / "project"
        self.project.mkdir()
        # Its own namespace: the benchmark's cleanups never see a user's bottles on the same engine.
        self.namespace = f"cbbench-{os.getpid()}"
        self.env = {**os.environ, "CLAUDE_BOTTLE_HOME": str(self.home), "CLAUDE_BOTTLE_NAMESPACE": self.namespace}
        for var in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"):
            self.env.pop(var, None)
        self.cli = [str(Path(sys.executable).with_name("claude-bottle"))]
        self.run("init")

    def run(self, *args: str, check: bool = True) -> tuple[float, subprocess.CompletedProcess[str]]:
        return timed([*self.cli, *args], env=self.env, cwd=self.project, check=check)

    def start(self) -> tuple[float, str]:
        elapsed, proc = self.run("start", "claude", "--detach")
        return elapsed, proc.stdout.strip()

    def slugs(self) -> list[str]:
        return [r["slug"] for r in json.loads(self.run("ls", "--json")[1].stdout)]

    def state(self, slug: str) -> Path:
        return self.home / f"state.{self.namespace}" / slug

    def cleanup(self) -> None:
        self.run("cleanup", "--yes", check=False)
