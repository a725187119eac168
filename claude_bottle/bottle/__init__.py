"""A bottle, resolved once: from the manifest at `start`, from its bottle.json at `resume`, `attach`,
`grant`. Everything a verb needs is on it, already checked: no verb parses the record's specs again."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_bottle.bottle.state import BottleRecord, StateDir, all_state_roots, bottle_home, new_slug
from claude_bottle.errors import BottleError
from claude_bottle.hostfs.paths import BottlePaths, check_bottle_paths
from claude_bottle.identity import RuntimeIds
from claude_bottle.manifest import AgentSpec, BottleSpec, Manifest

if TYPE_CHECKING:
    from claude_bottle.git.worktree import Project

__all__ = ["Bottle"]


@dataclass(frozen=True)
class Bottle:
    slug: str
    agent_name: str
    agent: AgentSpec
    bottle_name: str
    spec: BottleSpec
    backend: str
    manifest_path: Path | None
    paths: BottlePaths  # checked against every bottle's writable roots (for verbs that bind them)
    ids: RuntimeIds
    state: StateDir
    # Packages the operator granted through capability requests (kind -> names): a layer of their own
    # on top of the manifest's image, so the rest of the build is reused.
    granted: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Worktree mode: the operator's repository (a new bottle, before its checkout exists), then the
    # record's `worktree` (the checkout exists: <state>/worktree).
    project: Project | None = None
    worktree: dict[str, Any] | None = None
    # The engine asked for at start (`start --context NAME`), for a backend that has engines to choose from.
    context: str | None = None

    @property
    def workspace(self) -> Path:
        """The workspace as the manifest names it (in worktree mode: the operator's repository)."""
        return self.paths.workspace

    @property
    def mode(self) -> str:
        """How the agent works on the workspace: worktree, copy or mount (never auto: resolved at start)."""
        return self.agent.workspace_mode

    @property
    def agent_workspace(self) -> Path:
        """What the agent gets at /workspace: its own checkout (worktree), its own copy (copy), or the
        workspace itself (mount)."""
        if self.mode == "worktree":
            return self.state.path / "worktree"
        if self.mode == "copy":
            return self.state.path / "copy"
        return self.paths.workspace

    def workspace_words(self) -> str:
        """The workspace as the plan line says it."""
        if self.mode == "worktree":
            return f"workspace {self.workspace} (a checkout of its own on claude-bottle/{self.slug}; `merge` takes it)"
        if self.mode == "copy":
            return f"workspace {self.workspace} (a copy of its own; `claude-bottle apply {self.slug}` brings it home)"
        return f"workspace {self.workspace} (mounted: the agent writes your files directly)"

    @property
    def mounts(self) -> tuple[tuple[Path, str, bool], ...]:
        """The manifest's mounts, and in worktree mode the borrowed object store, read-only, at its own path
        (the checkout's alternates name it)."""
        if not self.worktree:
            return self.paths.mounts
        objects = str(self.worktree["objects"])
        return (*self.paths.mounts, (Path(objects), objects, True))

    @property
    def protected(self) -> tuple[str, ...]:
        """Control paths of the agent's workspace repository, mounted read-only (gitguard)."""
        if self.mode == "copy":
            return ()  # the tree is the agent's own: nothing of the operator's in it to protect
        if not self.worktree:
            return self.paths.protected
        from claude_bottle.git.settle import protected

        return tuple(protected(self.agent_workspace))

    @property
    def base(self) -> Path:
        """Where the manifest's relative paths start."""
        return self.manifest_path.parent if self.manifest_path else self.workspace

    @classmethod
    def new(
        cls,
        manifest: Manifest,
        agent_name: str,
        *,
        backend: str,
        root: Path | None = None,
        workspace_mode: str | None = None,
        modes: tuple[str, ...] = ("worktree", "copy", "mount"),
        context: str | None = None,
        isolation: str | None = None,
        isolations: tuple[str, ...] = ("container", "gvisor"),
    ) -> Bottle:
        """A bottle about to start: its slug drawn, its host paths checked (before anything is built)."""
        agent = manifest.agent(agent_name)
        mode = workspace_mode or agent.workspace_mode
        spec = manifest.bottles[agent.bottle]
        if isolation is not None and isolation != spec.isolation:
            spec = spec.model_copy(update={"isolation": isolation})
        if spec.isolation not in isolations:
            raise BottleError(
                f"the {backend} backend has no {spec.isolation} isolation: use one of {', '.join(isolations)} "
                f"(bottles.{agent.bottle}.isolation, or start --isolation)"
            )
        workspace = manifest.workspace(agent_name)
        if not workspace.is_dir():
            raise BottleError(f"workspace {workspace} does not exist: create it or fix agents.{agent_name}.workspace")
        paths = _checked(spec, workspace, manifest.directory, root)
        project = None
        if mode == "auto" and "worktree" not in modes:
            mode = "copy"
        if mode not in ("auto", *modes):
            raise BottleError(
                f"the {backend} backend has no {mode} workspace mode: use one of {', '.join(modes)} "
                f"(agents.{agent_name}.workspace_mode, or leave it out)"
            )
        if mode in ("auto", "worktree"):
            from claude_bottle.git.worktree import WorktreeError
            from claude_bottle.git.worktree import project as git_project

            try:
                project = git_project(paths.workspace)
                mode = "worktree"
            except WorktreeError:
                if mode == "worktree":
                    raise
                mode = "copy"  # not the top level of a repository with a commit: a copy of the files
        agent = agent.model_copy(update={"workspace_mode": mode})
        ids = RuntimeIds.for_mode(mode, paths.workspace)
        slug = new_slug(agent_name)
        return cls(
            slug=slug,
            agent_name=agent_name,
            agent=agent,
            bottle_name=agent.bottle,
            spec=spec,
            backend=backend,
            manifest_path=manifest.path,
            paths=paths,
            ids=ids,
            state=StateDir(slug, root),
            project=project,
            context=context,
        )

    @classmethod
    def recorded(cls, state: StateDir, *, check_paths: bool = False, record: BottleRecord | None = None) -> Bottle:
        """A bottle from its state dir. With `check_paths` (a new generation will bind them) its host paths
        are checked again: since its last run an agent may have planted a link on the way."""
        record = record or state.read_whole()
        agent = AgentSpec.model_validate(record.manifest.get("agent", {}))
        spec = BottleSpec.model_validate(record.manifest.get("bottle", {}))
        workspace = Path(record.workspace or ".")
        manifest_path = Path(record.manifest_path) if record.manifest_path else None
        if check_paths:
            if not workspace.is_dir():
                raise BottleError(f"workspace {workspace} of {state.slug} no longer exists: restore it to resume")
            paths = _checked(spec, workspace, manifest_path.parent if manifest_path else workspace, state.path.parent)
        else:
            paths = BottlePaths(workspace)
        if check_paths and record.worktree:
            objects = Path(str(record.worktree.get("objects", "")))
            if not objects.is_dir():
                raise BottleError(
                    f"{state.slug} borrows the objects of {record.worktree.get('project')}, which are gone: restore "
                    "the repository to resume"
                )
            checkout = state.path / "worktree"
            if checkout.is_symlink() or not checkout.is_dir():
                raise BottleError(f"{state.slug}: its checkout {checkout} is gone; it cannot resume")
        return cls(
            slug=state.slug,
            agent_name=record.agent,
            agent=agent,
            bottle_name=record.bottle,
            spec=spec,
            backend=record.backend,
            manifest_path=manifest_path,
            paths=paths,
            ids=_recorded_ids(record, agent, workspace),
            state=state,
            granted={k: tuple(v) for k, v in record.granted_packages.items() if k in ("apt", "pip", "npm")},
            worktree=record.worktree,
        )

    def record(self, **fields: object) -> BottleRecord:
        """The bottle.json of a new bottle."""
        return BottleRecord(
            slug=self.slug,
            agent=self.agent_name,
            bottle=self.bottle_name,
            backend=self.backend,
            manifest_path=str(self.manifest_path) if self.manifest_path else None,
            manifest={"bottle": self.spec.model_dump(mode="json"), "agent": self.agent.model_dump(mode="json")},
            workspace=str(self.workspace),
            writable=[str(p) for p in self.paths.writable],
            agent_ids=[self.ids.agent_uid, self.ids.agent_gid],
            **fields,  # type: ignore[arg-type]
        )


def _recorded_ids(record: BottleRecord, agent: AgentSpec, workspace: Path) -> RuntimeIds:
    """Who the bottle's agent ran as: the recorded ids (its files are theirs), else as its mode says."""
    host = RuntimeIds.for_mode(agent.workspace_mode, workspace if workspace.exists() else None)
    if len(record.agent_ids) == 2:
        return RuntimeIds(record.agent_ids[0], record.agent_ids[1], host.guard_uid, host.guard_gid)
    return host


def _checked(spec: BottleSpec, workspace: Path, base: Path, root: Path | None) -> BottlePaths:
    return check_bottle_paths(
        spec,
        workspace,
        base,
        state_roots=[*all_state_roots(), *([root] if root else [])],
        state_home=bottle_home(),
        home=Path.home(),
    )
