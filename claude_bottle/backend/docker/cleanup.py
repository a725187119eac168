"""Docker cleanup (SPEC C2): Compose projects, stray containers and networks, orphan state dirs.

The plan comes from three engine calls whatever the number of bottles (`compose ls`, `ps`,
`network ls`) plus the live-identity set of every backend; removal runs projects in parallel and
reports each step through a callback (no screen here). Only this namespace's objects are touched:
named `<namespace>-...` and labelled with it (runtime.owned_by); a name alone claims nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from claude_bottle import process
from claude_bottle.backend import BottleCleanupPlan, Report
from claude_bottle.bottle.claude_code import notice_crash
from claude_bottle.bottle.state import StateSummary, list_state_dirs
from claude_bottle.bottle.work_left import work_left
from claude_bottle.engine import ComposeProject, NetworkRow, PsRow, VolumeRow
from claude_bottle.errors import BottleError
from claude_bottle.identity import SLUG_LABEL, namespace, owned_by

if TYPE_CHECKING:
    from claude_bottle.engine import Context

__all__ = ["DockerBottleCleanupPlan", "plan_from_engine", "run_cleanup"]

COMPOSE_LABEL = "com.docker.compose.project"
PARALLEL = 8


@dataclass(frozen=True)
class Stray:
    id: str
    name: str
    slug: str = ""


def _slug(project: ComposeProject) -> str:
    return project.name.removeprefix(f"{namespace()}-")


@dataclass
class DockerBottleCleanupPlan(BottleCleanupPlan):
    backend: str = "docker"
    projects: list[ComposeProject] = field(default_factory=list)
    containers: list[Stray] = field(default_factory=list)
    networks: list[Stray] = field(default_factory=list)
    volumes: list[Stray] = field(default_factory=list)  # a remote bottle's (remote.py): brought home first
    state_dirs: list[StateSummary] = field(default_factory=list)  # orphans: removed
    kept: list[StateSummary] = field(default_factory=list)  # preserved or still live: never removed
    abandoned: list[str] = field(default_factory=list)  # slugs whose owner died mid-start
    warnings: list[str] = field(default_factory=list)  # another backend, or an engine, that could not say
    engines: list[tuple[Context, DockerBottleCleanupPlan]] = field(default_factory=list)  # other engines used

    @property
    def orphans(self) -> list[StateSummary]:
        return self.state_dirs

    def empty(self) -> bool:
        mine = not (self.projects or self.containers or self.networks or self.volumes or self.state_dirs)
        return mine and all(p.empty() for _, p in self.engines)

    def lines(self) -> list[str]:
        out = ["--- docker backend ---", *(f"note: {w}" for w in self.warnings), *self._objects()]
        for ctx, sub in self.engines:
            if not sub.empty():
                out += [f"--- docker engine {ctx.name} ({ctx.endpoint}) ---", *sub._objects()]
        out += [f"orphan state dir: {s.describe()} -> removed" for s in self.state_dirs]
        out += [f"kept state dir: {s.describe()}{_why_kept(s)}" for s in self.kept]
        if self.empty() and not self.kept:
            out.append("nothing to clean up")
        return out

    def _objects(self) -> list[str]:
        out = []
        for p in self.projects:
            note = " (owner died mid-start)" if _slug(p) in self.abandoned else ""
            out.append(f"compose project: {p.name} ({p.status}){note} -> compose down --volumes")
        out += [f"stray container: {c.name} -> docker rm -f" for c in self.containers]
        out += [f"stray network: {n.name} -> docker network rm" for n in self.networks]
        out += [f"volume: {v.name} -> its files brought home, then docker volume rm" for v in self.volumes]
        return out


def _why_kept(s: StateSummary) -> str:
    if s.preserved:
        return ""
    if s.status == "unreadable":
        return " (could not be read: look at it by hand)"
    if s.status == "incomplete":
        return " (made moments ago: may be a start in progress)"
    return " (live bottle)"


def _docker_backend(labels: dict[str, str]) -> bool:
    return labels.get("claude-bottle.backend", "docker") == "docker"


def plan_from_engine(
    *,
    projects: list[ComposeProject],
    containers: list[PsRow],
    networks: list[NetworkRow],
    volumes: list[VolumeRow] = (),  # type: ignore[assignment]
    live: set[str],
    state_root: Path | None = None,
    namespace: str,
    with_state: bool = True,
) -> DockerBottleCleanupPlan:
    """Build the plan from the engine's rows (the three calls) and the live slugs of every backend: the
    namespace's own objects only (by label, not by name), and every state dir, each classified."""
    plan = DockerBottleCleanupPlan()
    # Another backend's objects on this engine (a microVM bottle's sidecar bundle) are that backend's to reap.
    mine_c = [r for r in containers if owned_by(r.labels, namespace) and _docker_backend(r.labels)]
    mine_n = [r for r in networks if owned_by(r.labels, namespace) and _docker_backend(r.labels)]
    labels = [r.labels for r in mine_c] + [r.labels for r in mine_n]
    ours = {lb[COMPOSE_LABEL] for lb in labels if COMPOSE_LABEL in lb}
    plan.projects = sorted((p for p in projects if p.name in ours), key=lambda p: p.name)
    plan.containers = sorted(
        (Stray(r.id, r.name) for r in mine_c if COMPOSE_LABEL not in r.labels), key=lambda s: s.name
    )
    plan.networks = sorted((Stray(r.id, r.name) for r in mine_n if COMPOSE_LABEL not in r.labels), key=lambda s: s.name)
    plan.volumes = sorted(
        (
            Stray(r.name, r.name, r.labels.get(SLUG_LABEL, ""))
            for r in volumes
            if owned_by(r.labels, namespace) and _docker_backend(r.labels)
        ),
        key=lambda s: s.name,
    )
    if not with_state:  # another engine's objects: the state dirs are judged once, with the first
        return plan
    agents = {
        r.labels.get(SLUG_LABEL, ""): r.state for r in mine_c if r.labels.get("com.docker.compose.service") == "agent"
    }
    for state in list_state_dirs(state_root):
        try:
            # A run that ended badly and was not yet noticed is recorded first (and so preserved, kept).
            record = notice_crash(state, state.read(), agents.get(state.slug))
            summary = state.summary(work_left)
        except (OSError, BottleError) as exc:  # one odd dir is shown as it is; the rest goes on
            plan.kept.append(StateSummary(state.slug, state.path, "unreadable", False, False, False, None, 0, str(exc)))
            continue
        abandoned = state.abandoned(record)
        if abandoned:
            plan.abandoned.append(state.slug)
        # A start in progress holds the lock: it is live even before it has containers (and a dir without
        # a record yet, made moments ago, may be such a start before its lock).
        is_live = (state.slug in live and not abandoned) or state.busy()
        if record.status == "incomplete" and state.fresh():
            is_live = True
        if summary.preserved or is_live:
            plan.kept.append(summary)
        else:
            plan.state_dirs.append(summary)
    return plan


Outcome = process.Result | Exception


def _report(what: str, outcome: Outcome, failures: list[str], report: Report) -> bool:
    if isinstance(outcome, process.Result) and outcome.ok:
        report(f"removed {what}")
        return True
    if isinstance(outcome, Exception):
        why = str(outcome)
    else:
        why = (outcome.stderr.strip().splitlines() or [f"exit {outcome.returncode}"])[-1]
    failures.append(f"{what}: {why}")
    report(f"failed {what}: {why}")
    return False


def _attempt(args: list[str]) -> Outcome:
    from claude_bottle.engine import docker

    try:
        return docker(*args, timeout=300)
    except Exception as exc:  # noqa: BLE001 - best effort: reported, and the rest goes on
        return exc


def _down(p: ComposeProject) -> Outcome:
    args = ["compose", "-p", p.name]
    config = p.config.split(",")[0]
    if config and Path(config).is_file():
        args += ["-f", config]
    return _attempt([*args, "down", "--volumes", "--remove-orphans", "--timeout", "1"])


BringHome = Callable[[str, Report], None]


def run_cleanup(plan: DockerBottleCleanupPlan, report: Report, *, bring_home: BringHome | None = None) -> list[str]:
    """Remove what the plan lists: containers outside Compose, then projects (in parallel), then networks,
    then volumes (each bottle's files brought home first, by `bring_home`), then state."""
    failures: list[str] = []
    # Containers first: they hold network attachments, a project's too (a bottle's inbound relay is on its
    # networks). One call for each kind, and one per object only if the batch failed, so a single bad
    # object is named and does not stop the rest.
    _batch(["rm", "-f"], "container", plan.containers, failures, report)
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        for project, outcome in zip(plan.projects, pool.map(_down, plan.projects), strict=True):
            if _report(f"compose project {project.name}", outcome, failures, report):
                plan.stopped.append(_slug(project))
    _batch(["network", "rm"], "network", plan.networks, failures, report)
    _volumes(plan.volumes, failures, report, bring_home)
    return failures


def _volumes(volumes: list[Stray], failures: list[str], report: Report, bring_home: BringHome | None) -> None:
    """A remote bottle's volumes that hold its work (log, transcripts, workspace) go only once those are
    home; the others (its guard's secrets among them) go in any case."""
    from claude_bottle.backend.docker.compose import volume_name
    from claude_bottle.backend.docker.remote import DATA_PARTS

    removable = []
    for slug in sorted({v.slug for v in volumes}):
        mine = [v for v in volumes if v.slug == slug]
        try:
            if bring_home is not None and slug:
                bring_home(slug, report)
        except Exception as exc:  # noqa: BLE001 - kept, named, and the rest goes on
            work = {volume_name(slug, p) for p in DATA_PARTS}
            kept = [v for v in mine if v.name in work]
            failures += [f"volume {v.name}: kept, its files could not be brought home ({exc})" for v in kept]
            removable += [v for v in mine if v.name not in work]
            continue
        removable += mine
    _batch(["volume", "rm", "-f"], "volume", removable, failures, report)


def _batch(args: list[str], kind: str, items: list[Stray], failures: list[str], report: Report) -> None:
    if not items:
        return
    result = _attempt([*args, *(i.id for i in items)])
    if isinstance(result, process.Result) and result.ok:
        for i in items:
            report(f"removed {kind} {i.name}")
        return
    for i in items:
        _report(f"{kind} {i.name}", _attempt([*args, i.id]), failures, report)
