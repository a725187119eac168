"""Backends: where a bottle runs. The ABC, the plan objects, and the registry that picks one.

A backend implements `BottleBackend` and nothing else: it is handed a resolved `Bottle` (bottle.py) and
the guard's prepared inputs (guard/inputs.py), and gives back lines and data, never output on a screen.
The registry names backends by string, so no code outside a backend's own folder imports it.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from claude_bottle.bottle.state import StateDir, StateSummary
from claude_bottle.errors import BottleError

if TYPE_CHECKING:  # the manifest's models cost ~0.2 s to import: only for commands that read one
    from claude_bottle.bottle import Bottle
    from claude_bottle.guard_inputs.inputs import GuardInputs

__all__ = [
    "DEFAULT_BACKEND",
    "BottleBackend",
    "BottleCleanupPlan",
    "BottlePlan",
    "BottleStatus",
    "Check",
    "Progress",
    "PublishedPort",
    "Report",
    "enumerate_active_bottles",
    "get_bottle_backend",
    "known_backend_names",
    "manifest_ports",
    "resolve_backend_name",
]

DEFAULT_BACKEND = "docker"
ENV_VAR = "CLAUDE_BOTTLE_BACKEND"

# name -> "module:Class"; imported lazily so a backend's imports cost nothing until it is used.
_BACKENDS: dict[str, str] = {
    "docker": "claude_bottle.backend.docker.backend:DockerBottleBackend",
    "smolmachines": "claude_bottle.backend.smolmachines.backend:SmolmachinesBottleBackend",
    "kubernetes": "claude_bottle.backend.kubernetes.backend:KubernetesBottleBackend",
}

Progress = Callable[[str], None]  # a line of progress (builds, waits)
Report = Callable[[str], None]  # a line of what was done (cleanup: removed, failed)


@dataclass
class BottlePlan:
    """What `start` will do, shown before it does it."""

    bottle: Bottle
    actions: list[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return self.bottle.slug

    @property
    def state(self) -> StateDir:
        return self.bottle.state

    def line(self) -> str:
        """One line: what will run where, and what it may reach."""
        b = self.bottle
        allowed = ", ".join(r.label() for r in b.spec.egress.allow) or "nothing"
        line = (
            f"starting {b.slug}: agent {b.agent_name} in bottle {b.bottle_name} on {b.backend}; "
            f"{b.workspace_words()}; "
            f"egress: {allowed}"
        )
        return line + "".join(f"; {a}" for a in self.actions)


class BottleCleanupPlan(ABC):
    """What `cleanup` would remove for one backend (and what it keeps). A backend removes its engine's
    objects only; what follows for a bottle it stopped (its record, secrets, git settle) and which state
    dirs go is the work layer's (work/upkeep.py), once for every backend: the backend names the slugs it
    stopped in `stopped` while it cleans, and the orphan state dirs it found (`orphans`, from the same engine
    calls that told it what is live)."""

    backend: str

    @property
    def stopped(self) -> list[str]:
        """Slugs whose running objects this cleanup removed (filled while it runs)."""
        found: list[str] = self.__dict__.setdefault("_stopped", [])
        return found

    @property
    def orphans(self) -> list[StateSummary]:
        """State dirs of no live bottle of any backend, to be removed by the work layer."""
        return []

    @abstractmethod
    def lines(self) -> list[str]: ...

    @abstractmethod
    def empty(self) -> bool: ...


@dataclass(frozen=True)
class BottleStatus:
    slug: str
    backend: str
    status: str  # running | exited | created | missing ...
    owner_pid: int | None = None
    detail: str = ""
    ports: tuple[PublishedPort, ...] = ()


@dataclass(frozen=True)
class PublishedPort:
    """One of the agent's ports as the host sees it: `guest` in the bottle, at `address:host` here."""

    guest: int
    host: int
    address: str = "127.0.0.1"

    def __str__(self) -> str:  # as `docker port` says it
        return f"{self.guest}/tcp -> {self.address}:{self.host}"


def manifest_ports(bottle: Bottle) -> list[PublishedPort]:
    """The ports the agent's manifest entry publishes at every start, on the host's loopback."""
    return [PublishedPort(p.guest, p.host_port) for p in bottle.agent.ports]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


class BottleBackend(ABC):
    """A place bottles run. Methods take keyword arguments only."""

    name: ClassVar[str]
    # How its agents may work on a workspace (`auto` picks worktree where it is listed and the workspace is a
    # repository, else copy): a checkout of its own, a copy of its own, or the operator's files mounted.
    workspace_modes: ClassVar[tuple[str, ...]] = ("worktree", "copy", "mount")
    # What its agents may run under (a bottle's `isolation`): the host's kernel (container), gVisor's.
    isolations: ClassVar[tuple[str, ...]] = ("container", "gvisor")
    # Can it publish the agent's ports on the host (`ports`, `claude-bottle port`)?
    publishes_ports: ClassVar[bool] = False

    @abstractmethod
    def plan(self, *, bottle: Bottle) -> BottlePlan: ...

    @abstractmethod
    def prepare_images(self, *, plan: BottlePlan, progress: Progress) -> dict[str, str]:
        """Build (or find cached) images; returns their ids by role."""

    @abstractmethod
    def start(self, *, plan: BottlePlan, images: dict[str, str], guard: GuardInputs, progress: Progress) -> None:
        """Create and start the bottle: the agent sealed behind a guard run from `guard`."""

    @abstractmethod
    def wait_ready(self, *, state: StateDir, timeout: float = 30.0) -> None: ...

    @abstractmethod
    def stop(self, *, state: StateDir) -> None:
        """Stop and remove the bottle's containers and networks; the state dir stays."""

    @abstractmethod
    def exec(
        self,
        *,
        state: StateDir,
        argv: Sequence[str],
        tty: bool,
        interactive: bool,
        workdir: str | None = None,
        env: dict[str, str] | None = None,
    ) -> int: ...

    @abstractmethod
    def exec_output(self, *, state: StateDir, argv: Sequence[str]) -> tuple[int, str]:
        """Run a command in the agent container with no terminal; its exit code and output."""

    @abstractmethod
    def logs(self, *, state: StateDir, follow: bool, sink: Callable[[bytes], None]) -> int:
        """The bottle's output, raw, handed to sink as it comes (the caller decides how it is shown)."""

    @abstractmethod
    def statuses(self) -> dict[str, BottleStatus]:
        """Every bottle this backend can see, by slug, from a fixed number of engine calls."""

    @abstractmethod
    def doctor(self, base_images: Sequence[str] = ()) -> list[Check]:
        """Is this machine ready for this backend: engine, tools, and the base images a manifest names
        (`base_images`; the defaults without one)? One Check per item, with the fix."""

    @abstractmethod
    def prepare_cleanup(self) -> BottleCleanupPlan:
        """Everything of this backend's that `cleanup` would remove (and what it keeps), changing nothing."""

    @abstractmethod
    def cleanup(self, plan: BottleCleanupPlan, *, report: Report) -> list[str]:
        """Remove what the plan lists, best effort, reporting each step; returns one line per failure."""

    def policy_changed(self, state: StateDir) -> None:
        """The bottle's policy file was rewritten (a grant, an answer): make the running guard see it. The
        guard re-reads a file it mounts, so only a backend whose guard reads a copy has work here."""
        del state  # nothing to do: the guard mounts the file itself

    def bring_home(self, state: StateDir) -> None:
        """Bring home now what a running bottle writes where this machine cannot see it (the audit log, the
        requests, the transcripts and the workspace of a bottle on a remote engine or a cluster). A backend
        whose bottles write into the state dir itself has nothing to do."""
        del state

    def files_elsewhere(self, state: StateDir) -> bool:
        """Does this bottle write its log and workspace away from this machine (`bring_home` brings them)?"""
        del state
        return False

    def read_only_paths(self, bottle: Bottle) -> list[str]:
        """The workspace repository's control paths this backend really mounts read-only in the bottle
        (gitguard's settle trusts those unchanged, and judges every other one)."""
        return list(bottle.protected)

    def release_files(self, state: StateDir) -> None:
        """Before a state dir is removed, when this user could not remove some of it: what the agent's uid
        made there (the bottle user's, for a normal user) removed with the backend's help. Default: nothing."""
        del state

    def publish_ports(self, *, state: StateDir, ports: Sequence[PublishedPort]) -> None:
        """Publish exactly `ports` of the running bottle's agent on the host (none: unpublish them all),
        without giving the agent any way out. Only a backend with `publishes_ports` is asked."""
        del state, ports
        raise BottleError(f"the {self.name} backend cannot publish an agent's ports")

    def published_ports(self, *, state: StateDir) -> list[PublishedPort]:
        """What the running bottle publishes now."""
        del state
        return []

    def enumerate_active(self) -> set[str]:
        """Slugs of bottles that are live (anything still present in the engine)."""
        return set(self.statuses())


def known_backend_names() -> list[str]:
    return sorted(_BACKENDS)


def get_bottle_backend(name: str | None = None) -> BottleBackend:
    name = name or os.environ.get(ENV_VAR) or DEFAULT_BACKEND
    target = _BACKENDS.get(name)
    if target is None:
        raise BottleError(f"unknown backend {name!r}: choose one of {', '.join(known_backend_names())}")
    module, _, cls = target.partition(":")
    backend_cls: type[BottleBackend] = getattr(importlib.import_module(module), cls)
    return backend_cls()


def resolve_backend_name(
    *, flag: str | None, recorded: str | None = None, manifest: str | None = None
) -> tuple[str, str]:
    """The backend to use and where the choice came from: flag, record, manifest, env, default."""
    for value, source in (
        (flag, "--backend"),
        (recorded, "bottle.json"),
        (manifest, "manifest"),
        (os.environ.get(ENV_VAR), ENV_VAR),
    ):
        if value:
            if value not in _BACKENDS:
                raise BottleError(
                    f"unknown backend {value!r} (from {source}): choose one of {', '.join(known_backend_names())}"
                )
            return value, source
    return DEFAULT_BACKEND, "default"


def enumerate_active_bottles(*, skip: str | None = None) -> tuple[dict[str, set[str]], list[str]]:
    """Live slugs per backend, and a warning per backend that could not say. A backend whose tool is
    missing contributes nothing; it does not fail the call. `skip` leaves out a backend already asked."""
    active: dict[str, set[str]] = {}
    warnings: list[str] = []
    for name in known_backend_names():
        if name == skip:
            continue
        try:
            active[name] = get_bottle_backend(name).enumerate_active()
        except BottleError as exc:
            warnings.append(f"{name} backend: no live bottles listed ({exc})")
            active[name] = set()
    return active, warnings
