"""Docker cleanup (SPEC C2): Compose projects, stray containers and networks, orphan state dirs.

The plan comes from three engine calls whatever the number of bottles (`compose ls`, `ps`,
`network ls`) plus the live-identity set of every backend; removal runs projects in parallel.
"""

from __future__ import annotations

import contextlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from ... import process
from ...errors import BottleError
from ...gitguard import settle_bottle
from ...guard_config import GuardFiles
from ...state import StateDir, StateSummary, list_state_dirs
from ...walk import remove_tree
from .. import BottleCleanupPlan
from .compose import parse_labels

__all__ = ["DockerBottleCleanupPlan", "plan_from_engine", "run_cleanup"]

PREFIX = "claude-bottle-"
COMPOSE_LABEL = "com.docker.compose.project"
PARALLEL = 8


@dataclass(frozen=True)
class Project:
    name: str
    status: str
    config: str

    @property
    def slug(self) -> str:
        return self.name.removeprefix(PREFIX)


@dataclass(frozen=True)
class Stray:
    id: str
    name: str


@dataclass
class DockerBottleCleanupPlan(BottleCleanupPlan):
    backend: str = "docker"
    projects: list[Project] = field(default_factory=list)
    containers: list[Stray] = field(default_factory=list)
    networks: list[Stray] = field(default_factory=list)
    state_dirs: list[StateSummary] = field(default_factory=list)  # orphans: removed
    kept: list[StateSummary] = field(default_factory=list)  # preserved or still live: never removed
    abandoned: list[str] = field(default_factory=list)  # slugs whose owner died mid-start

    def empty(self) -> bool:
        return not (self.projects or self.containers or self.networks or self.state_dirs)

    def print(self, console: Console) -> None:
        console.print("[bold]--- docker backend ---[/]")
        for p in self.projects:
            note = " (owner died mid-start)" if p.slug in self.abandoned else ""
            console.print(f"compose project: {escape(p.name)} ({escape(p.status)}){note} -> compose down --volumes")
        for c in self.containers:
            console.print(f"stray container: {escape(c.name)} -> docker rm -f")
        for n in self.networks:
            console.print(f"stray network: {escape(n.name)} -> docker network rm")
        for s in self.state_dirs:
            console.print(f"orphan state dir: {escape(s.describe())} -> removed")
        for s in self.kept:
            why = "" if s.preserved else " (live bottle)"
            console.print(f"[green]kept[/] state dir: {escape(s.describe())}{why}")
        if self.empty() and not self.kept:
            console.print("nothing to clean up")


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def plan_from_engine(
    *, compose_ls: str, ps: str, networks: str, live: set[str], state_root: Path | None = None
) -> DockerBottleCleanupPlan:
    """Build the plan from the engine's JSON (the three calls' stdout) and the live slugs of every backend."""
    plan = DockerBottleCleanupPlan()
    projects = json.loads(compose_ls or "[]")
    plan.projects = sorted(
        (
            Project(p["Name"], p.get("Status", ""), p.get("ConfigFiles", ""))
            for p in projects
            if p["Name"].startswith(PREFIX)
        ),
        key=lambda p: p.name,
    )
    for row in _json_lines(ps):
        name = row.get("Names", "")
        if name.startswith(PREFIX) and COMPOSE_LABEL not in parse_labels(row.get("Labels", "")):
            plan.containers.append(Stray(row["ID"], name))
    for row in _json_lines(networks):
        name = row.get("Name", "")
        if name.startswith(PREFIX) and COMPOSE_LABEL not in parse_labels(row.get("Labels", "")):
            plan.networks.append(Stray(row["ID"], name))
    plan.containers.sort(key=lambda s: s.name)
    plan.networks.sort(key=lambda s: s.name)
    for state in list_state_dirs(state_root):
        record = state.read()
        abandoned = state.abandoned(record)
        if abandoned:
            plan.abandoned.append(state.slug)
        # A start in progress holds the lock: it is live even before it has containers.
        is_live = (state.slug in live and not abandoned) or state.busy()
        summary = state.summary()
        if summary.preserved or is_live:
            plan.kept.append(summary)
        else:
            plan.state_dirs.append(summary)
    return plan


def _report(what: str, outcome: process.Result | Exception, failures: list[str], console: Console) -> bool:
    if isinstance(outcome, process.Result) and outcome.ok:
        console.print(f"removed {escape(what)}")
        return True
    if isinstance(outcome, Exception):
        why = str(outcome)
    else:
        why = (outcome.stderr.strip().splitlines() or [f"exit {outcome.returncode}"])[-1]
    failures.append(f"{what}: {why}")
    console.print(f"[red]failed[/] {escape(what)}: {escape(why)}")
    return False


def _attempt(argv: list[str]) -> process.Result | Exception:
    try:
        return process.run(argv, timeout=300)
    except Exception as exc:  # noqa: BLE001 - best effort: reported, and the rest goes on
        return exc


def _down(p: Project) -> process.Result | Exception:
    argv = ["docker", "compose", "-p", p.name]
    config = p.config.split(",")[0]
    if config and Path(config).is_file():
        argv += ["-f", config]
    return _attempt([*argv, "down", "--volumes", "--remove-orphans", "--timeout", "1"])


def run_cleanup(plan: DockerBottleCleanupPlan, console: Console) -> list[str]:
    """Remove what the plan lists: projects (in parallel), then containers, then networks, then state."""
    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        for project, outcome in zip(plan.projects, pool.map(_down, plan.projects), strict=True):
            if _report(f"compose project {project.name}", outcome, failures, console):
                _mark_stopped(project.slug, console)
    # Containers before networks: they hold the network attachments. One call for each kind, and one
    # per object only if the batch failed, so a single bad object is named and does not stop the rest.
    _batch(["docker", "rm", "-f"], "container", plan.containers, failures, console)
    _batch(["docker", "network", "rm"], "network", plan.networks, failures, console)
    for s in plan.state_dirs:
        # Its last run's workspace is settled first (gitguard): what that moves aside keeps the state dir.
        state = StateDir(s.slug, s.path.parent)
        with contextlib.suppress(BottleError, OSError):
            GuardFiles(state).drop_secrets()
            settle_bottle(state, lambda line: console.print(line, markup=False, highlight=False))
        if state.preserved():
            console.print(f"kept state dir {escape(str(s.path))}: preserved ({escape(state.preserved() or '')})")
            continue
        _report(f"state dir {s.path}", _remove_tree(s.path), failures, console)
    return failures


def _remove_tree(path: Path) -> process.Result | Exception:
    try:
        remove_tree(path)
    except OSError as exc:
        return exc
    return process.Result(("rm", "-r", str(path)), 0, "", "")


def _batch(argv: list[str], kind: str, items: list[Stray], failures: list[str], console: Console) -> None:
    if not items:
        return
    result = _attempt([*argv, *(i.id for i in items)])
    if isinstance(result, process.Result) and result.ok:
        for i in items:
            console.print(f"removed {kind} {escape(i.name)}")
        return
    for i in items:
        _report(f"{kind} {i.name}", _attempt([*argv, i.id]), failures, console)


def _mark_stopped(slug: str, console: Console) -> None:
    """A bottle whose containers cleanup removed is no longer running: say so in its record."""
    try:
        state = StateDir(slug)
    except BottleError:
        return  # a project name that is not a slug: nothing to mark
    if state.exists():
        record = state.read()
        if record.status in ("running", "creating"):
            state.update(status="stopped")
        GuardFiles(state).drop_secrets()
        with contextlib.suppress(BottleError, OSError):
            settle_bottle(state, lambda line: console.print(line, markup=False, highlight=False))
