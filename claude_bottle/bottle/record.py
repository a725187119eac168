"""bottle.json: the record of a bottle (what is needed to find, show, stop or resume it), read on every `ls`,
so a plain dataclass checked against its own annotations, not a pydantic model."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["SCHEMA_VERSION", "STATUSES", "BottleRecord", "now_iso"]

SCHEMA_VERSION = 1


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


STATUSES = ("creating", "running", "stopped", "failed", "crashed", "incomplete", "blocked")


@dataclass
class BottleRecord:
    """bottle.json: everything needed to find, show, stop or resume a bottle."""

    slug: str
    agent: str
    bottle: str
    backend: str
    schema_version: int = SCHEMA_VERSION
    status: str = "creating"  # one of STATUSES
    created: str = field(default_factory=now_iso)
    updated: str = field(default_factory=now_iso)
    manifest_path: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    workspace: str | None = None
    writable: list[str] = field(default_factory=list)  # host paths the agent can write (workspace, rw mounts)
    images: dict[str, str] = field(default_factory=dict)
    session_id: str | None = None
    owner_pid: int | None = None
    owner_started: float | None = None
    generation: int = 1
    error: str | None = None
    rebuilt: bool = False  # the Dockerfile was rewritten by a capability rebuild
    attached_pid: int | None = None  # the CLI running claude in the foreground, while it does
    attached_started: float | None = None
    snapshot_due: bool = False  # a crash was noticed (by `ls`) and its transcript snapshot not yet taken
    run_started: float | None = None  # epoch time the current run began; cleared once its workspace is settled
    git_protected: list[str] = field(default_factory=list)  # workspace paths mounted read-only in that run
    wants: list[str] = field(default_factory=list)  # a blocked bottle's pending package requests (kind:name)
    granted_packages: dict[str, list[str]] = field(default_factory=dict)  # capability grants: kind -> names
    ran_with: dict[str, str] = field(default_factory=dict)  # sha256 of the policy and manifest a run started with
    run_mode: str | None = None  # how claude last ran: interactive | headless | detached (a grant resumes so)
    # Worktree mode: the operator's repository, its object store, the base commit and the bottle's branch.
    worktree: dict[str, Any] | None = None
    # Who the agent ran as ([uid, gid]): the bottle user in worktree and copy modes, its files' owner after.
    agent_ids: list[int] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Any) -> BottleRecord:
        """Validate a parsed bottle.json; unknown keys (from newer versions) are ignored."""
        if not isinstance(data, dict):
            raise TypeError("bottle.json is not an object")
        known = {k: v for k, v in data.items() if k in _RECORD_TYPES}
        for key, value in known.items():
            if not isinstance(value, _RECORD_TYPES[key]) or (
                isinstance(value, bool) and bool not in _RECORD_TYPES[key]
            ):
                raise ValueError(f"bottle.json: {key} has the wrong type")
        for key in ("slug", "agent", "bottle", "backend"):
            if key not in known:
                raise ValueError(f"bottle.json: {key} is missing")
        if known.get("status", "creating") not in STATUSES:
            raise ValueError("bottle.json: unknown status")
        return cls(**known)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def _json_types(annotation: Any) -> tuple[type, ...]:
    """The JSON value types a field accepts, from its annotation (int is fine where float is expected)."""
    members = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    kinds = [typing.get_origin(a) or a for a in members]
    return (*kinds, int) if float in kinds else tuple(kinds)


# bottle.json is read on every `ls`, so it is a plain dataclass checked by hand against its own
# annotations (importing pydantic costs ~0.2 s, more than the rest of `ls`).
_RECORD_TYPES = {name: _json_types(tp) for name, tp in typing.get_type_hints(BottleRecord).items()}
