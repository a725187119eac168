"""Who a bottle's processes run as, and the identity labels everything a bottle owns carries.
Backend-neutral: every backend names and labels its objects with these."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from claude_bottle.errors import BottleError

__all__ = [
    "BACKEND_LABEL",
    "BOTTLE_UID",
    "BOTTLE_UID_ENV",
    "DEFAULT_NAMESPACE",
    "LABEL",
    "NAMESPACE_ENV",
    "SLUG_LABEL",
    "Identity",
    "RuntimeIds",
    "bottle_uid",
    "namespace",
    "object_labels",
    "owned_by",
]

LABEL = "claude-bottle"
AGENT_HOME = "/home/claude"  # the agent user's home in every bottle image
DEFAULT_NAMESPACE = "claude-bottle"
NAMESPACE_ENV = "CLAUDE_BOTTLE_NAMESPACE"
NAMESPACE_LABEL = f"{LABEL}.namespace"
SLUG_LABEL = f"{LABEL}.slug"
BACKEND_LABEL = f"{LABEL}.backend"


def object_labels(backend: str, slug: str = "", ns: str | None = None) -> dict[str, str]:
    """The labels that select a backend's objects (of one bottle, with `slug`) in a namespace: the part of
    Identity.labels that every engine object carries and every query selects by."""
    out = {NAMESPACE_LABEL: ns if ns is not None else namespace(), BACKEND_LABEL: backend}
    return out | ({SLUG_LABEL: slug} if slug else {})


_NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
NAMESPACE_MAX = 24
# The bottle user: who the agent runs as when its workspace is a tree of its own (worktree and copy modes).
# Not the operator, so that git on the host refuses every repository the agent makes or changes ("dubious
# ownership") and nothing the agent writes is ever a folder the operator owns. Outside the ranges adduser
# (1000-59999), systemd's dynamic users (61184-65519) and subordinate ids (100000 and up) hand out.
BOTTLE_UID = 60999
BOTTLE_UID_ENV = "CLAUDE_BOTTLE_AGENT_UID"


def bottle_uid(environ: Mapping[str, str] | None = None) -> int:
    """The bottle user's uid (and gid): CLAUDE_BOTTLE_AGENT_UID, else 60999; never a uid this host has an
    account for, nor root, nor the operator."""
    env = os.environ if environ is None else environ
    raw = env.get(BOTTLE_UID_ENV, "")
    if raw and (not raw.isdigit() or not 0 < int(raw) < 2**31 - 1):
        raise BottleError(f"{BOTTLE_UID_ENV}={raw!r} is not a uid: use a number between 1 and 2147483646, or unset it")
    uid = int(raw) if raw else BOTTLE_UID
    import pwd

    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    if name is not None or uid == os.getuid():
        raise BottleError(
            f"uid {uid} is a user of this host ({name or 'you'}): the bottle user must be nobody's, so set "
            f"{BOTTLE_UID_ENV} to a free uid"
        )
    return uid


def namespace(environ: Mapping[str, str] | None = None) -> str:
    """Which bottles this CLI sees and may touch: every object it makes is named `<namespace>-...` and
    labelled with it, and `ls`, `stop` and `cleanup` act inside it only (like Compose's project name).
    Tests, benchmarks and the demo run in their own, so a user's bottles survive them."""
    env = os.environ if environ is None else environ
    ns = env.get(NAMESPACE_ENV, "") or DEFAULT_NAMESPACE
    if len(ns) > NAMESPACE_MAX or not _NAMESPACE_RE.match(ns):
        raise BottleError(
            f"{NAMESPACE_ENV}={ns!r} is not a namespace: use lowercase letters, digits and single dashes, "
            f"starting with a letter, at most {NAMESPACE_MAX} characters (or unset it for {DEFAULT_NAMESPACE!r})"
        )
    return ns


def owned_by(labels: Mapping[str, str], ns: str) -> bool:
    """Is an engine object, by its labels, a bottle's object in namespace `ns`? Objects made before
    namespaces existed carry our labels but no namespace: they belong to the default one."""
    if SLUG_LABEL not in labels and NAMESPACE_LABEL not in labels:
        return False
    return labels.get(NAMESPACE_LABEL, DEFAULT_NAMESPACE) == ns


@dataclass(frozen=True)
class RuntimeIds:
    """Who the agent and guard run as. The guard never as root (a root host user maps it to 10001). The
    agent as whoever owns the work: uid 0 only for root's own workspace, and then without capabilities
    (cap_drop ALL, no-new-privileges), so it can write what root owns there and nothing a capability gives."""

    agent_uid: int
    agent_gid: int
    guard_uid: int
    guard_gid: int

    @classmethod
    def for_mode(cls, mode: str, workspace: Path | None = None) -> RuntimeIds:
        """Mount mode: the agent edits the operator's files, so it runs as their owner (for_host). Worktree and
        copy modes: the agent works in a tree of its own, as the bottle user (bottle_uid)."""
        host = cls.for_host(workspace)
        if mode == "mount":
            return host
        uid = bottle_uid()
        return cls(uid, uid, host.guard_uid, host.guard_gid)

    @property
    def needs_helper(self) -> bool:
        """Can what the agent owns be handed to it, or removed, only through the engine? (A normal user whose
        agent runs as the bottle user: chown and unlinking in its folders need root.)"""
        return os.getuid() != 0 and self.agent_uid != os.getuid()

    @classmethod
    def for_host(cls, workspace: Path | None = None) -> RuntimeIds:
        """The agent runs as the invoking user, so what it writes in the workspace is theirs. Under root
        that is the sudo user, else the workspace's owner; a root-owned workspace (a server, a CI runner, a
        dev container) gets uid 0 without capabilities: it must be able to edit what it was given."""
        uid, gid = os.getuid(), os.getgid()
        if uid != 0:
            return cls(uid, gid, uid, gid)
        if os.environ.get("SUDO_UID", "").isdigit() and int(os.environ["SUDO_UID"]) != 0:
            agent = (int(os.environ["SUDO_UID"]), int(os.environ.get("SUDO_GID", os.environ["SUDO_UID"])))
        elif workspace is not None and workspace.exists() and workspace.stat().st_uid != 0:
            st = workspace.stat()
            agent = (st.st_uid, st.st_gid)
        else:
            agent = (0, 0)
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
    namespace: str = DEFAULT_NAMESPACE

    def labels(self) -> dict[str, str]:
        return {
            **object_labels(self.backend, self.slug, self.namespace),
            f"{LABEL}.owner-pid": str(self.owner_pid),
            f"{LABEL}.owner-started": f"{self.owner_started:.2f}",
            f"{LABEL}.created": self.created,
        }
