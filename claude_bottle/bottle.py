"""A bottle, resolved once: from the manifest at `start`, from its bottle.json at `resume`, `attach`,
`grant`. Everything a verb needs is on it, already checked: no verb parses the record's specs again."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import BottleError
from .manifest import AgentSpec, BottleSpec, Manifest
from .paths import BottlePaths, check_bottle_paths
from .runtime import RuntimeIds
from .state import BottleRecord, StateDir, all_state_roots, bottle_home, new_slug

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

    @property
    def workspace(self) -> Path:
        return self.paths.workspace

    @property
    def base(self) -> Path:
        """Where the manifest's relative paths start."""
        return self.manifest_path.parent if self.manifest_path else self.workspace

    @classmethod
    def new(cls, manifest: Manifest, agent_name: str, *, backend: str, root: Path | None = None) -> Bottle:
        """A bottle about to start: its slug drawn, its host paths checked (before anything is built)."""
        agent = manifest.agent(agent_name)
        spec = manifest.bottles[agent.bottle]
        workspace = manifest.workspace(agent_name)
        if not workspace.is_dir():
            raise BottleError(f"workspace {workspace} does not exist: create it or fix agents.{agent_name}.workspace")
        paths = _checked(spec, workspace, manifest.directory, root)
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
            ids=RuntimeIds.for_host(paths.workspace),
            state=StateDir(slug, root),
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
        return cls(
            slug=state.slug,
            agent_name=record.agent,
            agent=agent,
            bottle_name=record.bottle,
            spec=spec,
            backend=record.backend,
            manifest_path=manifest_path,
            paths=paths,
            ids=RuntimeIds.for_host(workspace if workspace.exists() else None),
            state=state,
            granted={k: tuple(v) for k, v in record.granted_packages.items() if k in ("apt", "pip", "npm")},
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
            **fields,  # type: ignore[arg-type]
        )


def _checked(spec: BottleSpec, workspace: Path, base: Path, root: Path | None) -> BottlePaths:
    return check_bottle_paths(
        spec,
        workspace,
        base,
        state_roots=[*all_state_roots(), *([root] if root else [])],
        state_home=bottle_home(),
        home=Path.home(),
    )
