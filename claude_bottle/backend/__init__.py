"""Backends: where a bottle runs. The ABC, the plan objects, and the registry that picks one."""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from rich.console import Console

from ..errors import BottleError
from ..state import StateDir

if TYPE_CHECKING:  # the manifest's models cost ~0.2 s to import: only for commands that read one
    from ..manifest import AgentSpec, BottleSpec
    from ..paths import BottlePaths

__all__ = [
    "DEFAULT_BACKEND",
    "BottleBackend",
    "BottleCleanupPlan",
    "BottlePlan",
    "BottleStatus",
    "Check",
    "Progress",
    "enumerate_active_bottles",
    "get_bottle_backend",
    "known_backend_names",
    "resolve_backend_name",
]

DEFAULT_BACKEND = "docker"
ENV_VAR = "CLAUDE_BOTTLE_BACKEND"

# name -> "module:Class"; imported lazily so a backend's imports cost nothing until it is used.
_BACKENDS: dict[str, str] = {
    "docker": "claude_bottle.backend.docker.backend:DockerBottleBackend",
}

Progress = Callable[[str], None]


@dataclass
class BottlePlan:
    """What `start` will do, printable before it does it."""

    slug: str
    agent_name: str
    agent: AgentSpec
    bottle_name: str
    bottle: BottleSpec
    backend: str
    workspace: Path
    paths: BottlePaths  # every host path, checked (workspace, mounts, ca_certs)
    state: StateDir
    manifest_path: Path | None
    actions: list[str] = field(default_factory=list)

    def print(self, console: Console) -> None:
        """One line: what will run where, and what it may reach."""
        allowed = ", ".join(r.label() for r in self.bottle.egress.allow) or "nothing"
        line = (
            f"starting {self.slug}: agent {self.agent_name} in bottle {self.bottle_name} on {self.backend}; "
            f"workspace {self.workspace}; egress: {allowed}"
        )
        console.print(line + "".join(f"; {a}" for a in self.actions), markup=False)  # user text, not markup


class BottleCleanupPlan(ABC):
    """What `cleanup` would remove for one backend."""

    backend: str

    @abstractmethod
    def print(self, console: Console) -> None: ...

    @abstractmethod
    def empty(self) -> bool: ...


@dataclass(frozen=True)
class BottleStatus:
    slug: str
    backend: str
    status: str  # running | exited | created | missing ...
    owner_pid: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


class BottleBackend(ABC):
    """A place bottles run. Methods take keyword arguments only."""

    name: ClassVar[str]

    @abstractmethod
    def plan(
        self,
        *,
        slug: str,
        agent_name: str,
        agent: AgentSpec,
        bottle_name: str,
        bottle: BottleSpec,
        workspace: Path,
        paths: BottlePaths,
        state: StateDir,
        manifest_path: Path | None,
    ) -> BottlePlan: ...

    @abstractmethod
    def prepare_images(self, *, plan: BottlePlan, progress: Progress) -> dict[str, str]:
        """Build (or find cached) images; returns their ids by role."""

    @abstractmethod
    def start(self, *, plan: BottlePlan, images: dict[str, str], progress: Progress) -> None: ...

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
    def doctor(self) -> list[Check]: ...

    @abstractmethod
    def prepare_cleanup(self) -> BottleCleanupPlan:
        """Everything of this backend's that `cleanup` would remove (and what it keeps), changing nothing."""

    @abstractmethod
    def cleanup(self, plan: BottleCleanupPlan, *, console: Console) -> list[str]:
        """Remove what the plan lists, best effort; returns one line per failure."""

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


def enumerate_active_bottles(*, skip: str | None = None) -> dict[str, set[str]]:
    """Live slugs per backend. A backend whose tool is missing contributes nothing (and says so on
    stderr); it does not fail the call. `skip` leaves out a backend the caller has already asked."""
    active: dict[str, set[str]] = {}
    for name in known_backend_names():
        if name == skip:
            continue
        try:
            active[name] = get_bottle_backend(name).enumerate_active()
        except BottleError as exc:
            Console(stderr=True).print(f"[dim]{name} backend: no live bottles listed ({exc})[/]")
            active[name] = set()
    return active
