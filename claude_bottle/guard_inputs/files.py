"""The guard's files in a bottle's state dir (`guard/`: policy.json, secrets.json, ca.crt or pipelock.yaml)
and its grants: written from the guard's own types (egress.policy), zeroed and removed when it stops.
Light on purpose (no manifest models): `ls`, `stop` and cleanup import it."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_bottle.bottle.state import StateDir, write_private
from claude_bottle.guard.policy import Policy, Rule

__all__ = ["GuardFiles", "drop_secrets", "load_grants", "policy_document", "save_grants"]


def policy_document(
    slug: str,
    allow: Sequence[Rule],
    deny: Sequence[Rule],
    grants: Sequence[Rule] = (),
    decisions: Mapping[str, tuple[str, str]] | None = None,
    ask_timeout: float = 0.0,
    git_refs: Sequence[str] = (),
    git_repos: Sequence[str] = (),
) -> dict[str, Any]:
    """The policy file, from the guard's own types and serialiser; with the operator's answers to the
    bottle's capability requests (an egress request waits in the guard for its answer)."""
    return Policy(
        bottle=slug,
        allow=(*allow, *grants),
        deny=tuple(deny),
        decisions=dict(decisions or {}),
        ask_timeout=ask_timeout,
        git_refs=tuple(git_refs),
        git_repos=tuple(git_repos),
    ).to_dict()


def load_grants(state: StateDir) -> list[Rule]:
    try:
        data = json.loads((state.path / "grants.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    return [Rule.from_dict(r) for r in data.get("egress", [])]


def save_grants(state: StateDir, rules: Sequence[Rule]) -> None:
    write_private(state.path / "grants.json", json.dumps({"egress": [r.to_dict() for r in rules]}, indent=2) + "\n")


@dataclass(frozen=True)
class GuardFiles:
    """The guard's directory in the state dir (mounted read-only into the guard)."""

    state: StateDir

    @property
    def dir(self) -> Path:
        return self.state.path / "guard"

    @property
    def policy(self) -> Path:
        return self.dir / "policy.json"

    @property
    def secrets(self) -> Path:
        return self.dir / "secrets.json"

    def write_policy(self, doc: Mapping[str, Any]) -> None:
        write_private(self.policy, json.dumps(doc, indent=2) + "\n")

    def write_secrets(self, doc: Mapping[str, Any]) -> None:
        write_private(self.secrets, json.dumps(doc) + "\n")

    def drop_secrets(self) -> None:
        """Credentials live on disk only while the bottle runs: zeroed in place (so the value does not
        linger in the file's blocks, or in any other name for the same file), then removed."""
        try:
            fd = os.open(self.secrets, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            size = os.fstat(fd).st_size
            os.pwrite(fd, b"\0" * size, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.secrets.unlink(missing_ok=True)


def drop_secrets(state: StateDir) -> None:
    GuardFiles(state).drop_secrets()
