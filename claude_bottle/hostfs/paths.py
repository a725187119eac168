"""Host paths a bottle binds, reads or writes, checked so nothing an agent can write can steer them.

Every bottle's agent can write its workspace and its `rw` mounts: those are the *agent-writable
roots* (all bottles with a state dir count, running or not, since any of them may run again). A host
path a manifest or a record names (a workspace, a mount source, `ca_certs`, a `file:` credential) is
refused when, on the way to it, it passes through a symbolic link that lies inside such a root: one
agent could otherwise point another bottle's workspace or mount at any host directory. Files the CLI
itself reads (CA bundles, credentials) are also refused when they lie in such a root at all. A
workspace or mount may not hold the claude-bottle state root (every bottle's secrets and policies),
nor be the user's home or `/`.

A check can be raced (a link swapped in between the check and the engine's mount), so the bottle
verifies afterwards: `file_identity()` gives the device and inode the engine must have mounted, and the
agent container reports what it got before anything of the agent runs (see `bottle-wait-guard`).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_bottle.errors import ManifestError

if TYPE_CHECKING:
    from claude_bottle.manifest import BottleSpec

__all__ = [
    "BottlePaths",
    "Roots",
    "check_bottle_paths",
    "check_path",
    "file_identity",
    "outside_workspace",
    "read_host_file",
    "verify_mounts",
    "writable_roots",
]

MAX_LINKS = 40
# The host's CA bundle, where the common distributions keep it (Debian/Ubuntu, Fedora/RHEL, Alpine/macOS).
HOST_CA_BUNDLES = (
    Path("/etc/ssl/certs/ca-certificates.crt"),
    Path("/etc/pki/tls/certs/ca-bundle.crt"),
    Path("/etc/ssl/cert.pem"),
)


@dataclass(frozen=True)
class Roots:
    """Agent-writable host directories, each with who can write it (for the error message)."""

    items: tuple[tuple[Path, str], ...] = ()

    def holding(self, path: Path) -> str | None:
        for root, who in self.items:
            if path == root or root in path.parents:
                return who
        return None

    def plus(self, paths: Iterable[Path], who: str) -> Roots:
        return Roots((*self.items, *((p, who) for p in paths)))


def writable_roots(state_roots: Iterable[Path]) -> Roots:
    """The workspaces and rw mounts of every bottle with a state dir (from its bottle.json), in every
    namespace: what an agent can write is agent-writable whichever namespace its bottle lives in."""
    items: list[tuple[Path, str]] = []
    dirs = [d for root in state_roots if root.is_dir() for d in sorted(root.iterdir())]
    for d in dirs:
        try:
            data: dict[str, Any] = json.loads((d / "bottle.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        who = f"bottle {d.name}"
        for p in data.get("writable") or ([data["workspace"]] if isinstance(data.get("workspace"), str) else []):
            if isinstance(p, str) and p.startswith("/"):
                items.append((Path(p), who))
    return Roots(tuple(items))


def _walk_links(path: Path) -> tuple[Path, list[Path]]:
    """Resolve path by hand: (the resolved path, where each symbolic link met on the way lies). ".." is
    taken after the links before it, as the kernel does."""
    todo = list((path if path.is_absolute() else Path.cwd() / path).parts[1:])
    cur = Path("/")
    links: list[Path] = []
    while todo:
        name = todo.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            cur = cur.parent
            continue
        nxt = cur / name
        try:
            st = nxt.lstat()
        except (FileNotFoundError, NotADirectoryError):
            return Path(cur, name, *todo), links
        if stat.S_ISLNK(st.st_mode):
            links.append(nxt)
            if len(links) > MAX_LINKS:
                raise ManifestError(f"{path}: too many symbolic links")
            target = nxt.readlink()
            if target.is_absolute():
                cur = Path("/")
                todo = list(target.parts[1:]) + todo
            else:
                todo = list(target.parts) + todo
            continue
        cur = nxt
    return cur, links


def check_path(path: Path, what: str, roots: Roots, *, read_by_host: bool = False) -> Path:
    """The resolved path, after refusing a link inside an agent-writable root on the way to it (and, for
    a file the host reads, the file lying in such a root at all)."""
    resolved, links = _walk_links(path.expanduser())
    for link in links:
        who = roots.holding(link.parent)
        if who is not None:
            raise ManifestError(
                f"{what} {path} passes through the symbolic link {link}, inside {who}'s writable files: an agent "
                "may have put it there; name the real path, or remove the link"
            )
    if read_by_host:
        who = roots.holding(resolved)
        if who is not None:
            raise ManifestError(
                f"{what} {path} lies in {who}'s writable files, which an agent can read and change: move it "
                "outside every bottle's workspace and rw mounts"
            )
    return resolved


def file_identity(path: Path) -> tuple[int, int]:
    """(device, inode) of a resolved path, opened without following any link on the way (a link swapped in
    since it was checked makes this fail rather than name another file)."""
    fd = _open_nofollow(path, os.O_PATH)
    try:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino
    finally:
        os.close(fd)


def read_host_file(path: Path) -> bytes:
    """Read a checked, resolved file without following a link anywhere on the way."""
    fd = _open_nofollow(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(21, "not a regular file")
        return f.read(16 * 1024 * 1024)


def _open_nofollow(path: Path, flags: int) -> int:
    if not path.is_absolute():
        raise ValueError(f"{path} is not absolute")
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parts = path.parts[1:]
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            nxt = os.open(name, (flags if last else os.O_PATH) | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
            if stat.S_ISLNK(os.fstat(fd).st_mode):  # O_PATH|O_NOFOLLOW opens a link itself: refuse it
                raise OSError(errno.ELOOP, "a symbolic link where a checked path was", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def refuse_state_and_home(path: Path, what: str, *, state_home: Path, home: Path) -> None:
    """A workspace or mount must not hold the state root, and must not be the user's home or /."""
    resolved = path.resolve()
    home_r = home.resolve()
    if resolved == Path("/") or resolved == home_r:
        raise ManifestError(
            f"{what} {resolved} is {'/' if resolved == Path('/') else 'your home directory'}: the agent would own "
            "everything in it; use a project directory"
        )
    state_r = state_home.resolve()
    if state_r == resolved or resolved in state_r.parents:
        raise ManifestError(
            f"{what} {resolved} holds the claude-bottle state root {state_r} (every bottle's credentials and "
            "policies): use a project directory, or set CLAUDE_BOTTLE_HOME elsewhere"
        )


def outside_workspace(path: Path, workspace: Path, what: str) -> Path:
    """A host path the manifest names (mount source, CA bundle, credential file), checked not to lie in
    the workspace: the agent writes there, so it could swap the file, or a symlink under it, between
    runs (and it can read a credential file there directly). Returns the resolved path."""
    resolved = path.resolve()
    ws = workspace.resolve()
    for candidate in (Path(os.path.abspath(path)), resolved):  # noqa: PTH100 - lexical on purpose: no symlinks followed
        if candidate == ws or ws in candidate.parents:
            raise ManifestError(
                f"{what} {path} is inside the workspace {ws}, which the agent can change and "
                "read: move it outside the workspace"
            )
    return resolved


def verify_mounts(report: str, expected: Sequence[tuple[str, int, int]]) -> str | None:
    """Compare what the agent container saw at its mount points ("DEV:INO TARGET" lines) with what was
    checked on the host. None when they match, else the first target that differs."""
    seen = {}
    for line in report.splitlines():
        ident, _, target = line.partition(" ")
        seen[target] = ident
    for target, dev, ino in expected:
        if seen.get(target) != f"{dev}:{ino}":
            return target
    return None


@dataclass(frozen=True)
class BottlePaths:
    """A bottle's host paths, checked and resolved before anything is built or started."""

    workspace: Path
    mounts: tuple[tuple[Path, str, bool], ...] = ()  # (source, guest path, read-only)
    ca_certs: Path | None = None
    roots: Roots = Roots()  # every agent-writable root, this bottle's own included
    protected: tuple[str, ...] = ()  # the workspace repository's control paths, mounted read-only (gitguard)

    @property
    def writable(self) -> tuple[Path, ...]:
        """What this bottle's agent can write on the host: recorded, so later checks know it."""
        return (self.workspace, *(src for src, _guest, ro in self.mounts if not ro))


def check_bottle_paths(
    bottle: BottleSpec,
    workspace: Path,
    base: Path,
    *,
    state_roots: Iterable[Path],
    state_home: Path,
    home: Path,
) -> BottlePaths:
    """Every host path of a bottle, checked (see the module's docstring). One-line errors, before any work."""
    roots = writable_roots(state_roots)
    ws = check_path(workspace, "workspace", roots)
    if not ws.is_dir():
        raise ManifestError(f"workspace {ws} does not exist: create it or fix agents.*.workspace")
    refuse_state_and_home(ws, "workspace", state_home=state_home, home=home)
    own = roots.plus([ws], "this bottle")
    raw = [(base / Path(m.host).expanduser(), m) for m in bottle.mounts]
    rw = [check_path(p, "mount source", own) for p, m in raw if m.mode == "rw"]
    own = own.plus(rw, "this bottle")
    mounts = []
    for p, m in raw:
        src = check_path(p, "mount source", own)
        outside_workspace(p, ws, "mount source")
        if not src.exists():
            raise ManifestError(f"mount source {src} does not exist: create it or fix bottles.*.mounts")
        refuse_state_and_home(src, "mount source", state_home=state_home, home=home)
        mounts.append((src, m.guest, m.mode == "ro"))
    ca = None
    if bottle.ca_certs:
        ca = check_path(base / Path(bottle.ca_certs).expanduser(), "ca_certs", own, read_by_host=True)
        if not ca.is_file():
            raise ManifestError(f"ca_certs {ca} is not a file: point it at a CA bundle (.crt/.pem)")
    elif bottle.host_ca:
        # What this host trusts, builds and the guard trust too (a TLS-inspecting network is the case).
        found = next((p for p in HOST_CA_BUNDLES if p.is_file()), None)
        ca = check_path(found, "the host's CA bundle", own, read_by_host=True) if found else None
    from claude_bottle.git.settle import protected

    return BottlePaths(ws, tuple(mounts), ca, own, tuple(protected(ws)))
