"""Who a bottle's processes run as, and the identity labels everything a bottle owns carries.
Backend-neutral: every backend names and labels its objects with these."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LABEL", "Identity", "RuntimeIds"]

LABEL = "claude-bottle"


@dataclass(frozen=True)
class RuntimeIds:
    """Who the agent and guard run as. Never root: a root host user maps to fixed unprivileged ids."""

    agent_uid: int
    agent_gid: int
    guard_uid: int
    guard_gid: int

    @classmethod
    def for_host(cls, workspace: Path | None = None) -> RuntimeIds:
        """The agent runs as the invoking user, so what it writes in the workspace is theirs. Under root
        that is the sudo user, else the workspace's owner; only a root-owned workspace gets 1000."""
        uid, gid = os.getuid(), os.getgid()
        if uid != 0:
            return cls(uid, gid, uid, gid)
        if os.environ.get("SUDO_UID", "").isdigit() and int(os.environ["SUDO_UID"]) != 0:
            agent = (int(os.environ["SUDO_UID"]), int(os.environ.get("SUDO_GID", os.environ["SUDO_UID"])))
        elif workspace is not None and workspace.exists() and workspace.stat().st_uid != 0:
            st = workspace.stat()
            agent = (st.st_uid, st.st_gid)
        else:
            agent = (1000, 1000)
        return cls(*agent, 10001, 10001)

    def agent_can_write(self, path: Path) -> bool:
        st = path.stat()
        mode = st.st_mode
        if st.st_uid == self.agent_uid:
            return bool(mode & 0o200)
        if st.st_gid == self.agent_gid:
            return bool(mode & 0o020)
        return bool(mode & 0o002)


@dataclass(frozen=True)
class Identity:
    """A bottle's identity, as labels on everything it owns (SPEC B2)."""

    slug: str
    backend: str
    owner_pid: int
    owner_started: float
    created: str

    def labels(self) -> dict[str, str]:
        return {
            f"{LABEL}.slug": self.slug,
            f"{LABEL}.backend": self.backend,
            f"{LABEL}.owner-pid": str(self.owner_pid),
            f"{LABEL}.owner-started": f"{self.owner_started:.2f}",
            f"{LABEL}.created": self.created,
        }
