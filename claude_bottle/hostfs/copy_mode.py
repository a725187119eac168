"""Copy mode: a bottle whose workspace is not a git repository works on a copy of its own (issue 21).

(Just over 450 lines: making the copy, reading what changed and writing it home share one entry format and
one set of descriptor walks; apart, each would carry the other's rules.)

The agent never writes a folder the operator owns: a folder it can write is one git on the host would take
for a repository the moment the agent leaves a HEAD in it (`git status` there then runs the `core.fsmonitor`
of the config beside it), and git's ownership check protects only folders someone else owns. So the copy,
`<state>/copy`, is made by the host from the operator's workspace and handed to the bottle user (whose
repositories git on the host refuses: "dubious ownership"). The operator watches it (an editor may open it:
git refuses to run there), and `claude-bottle apply SLUG` brings the agent's changes into the workspace.

Applying is judged: what the copy held when the bottle started is remembered (`copy-base.json`: each path's
kind and SHA-256), so a file the operator changed since is never overwritten (a conflict, named); nothing is
written through a link (every folder on the way opened by descriptor, without following one); and nothing
that git would read as a repository reaches the operator's tree (an entry named `.git`, a `HEAD` git would
accept: see `inert`). Everything the copy holds is read by descriptor, never following a link, within
budgets.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from claude_bottle.bottle.state import StateDir, write_private
from claude_bottle.errors import BottleError
from claude_bottle.git import shape
from claude_bottle.hostfs.walk import Walk
from claude_bottle.identity import RuntimeIds

__all__ = ["COPY", "Change", "apply", "changes", "copy_path", "create", "diff", "inert", "pending"]

COPY = "copy"
BASE = "copy-base.json"
MAX_FILES = 200_000  # entries a copy may hold (the operator's workspace at start, the agent's at apply)
MAX_BYTES = 4 << 30  # bytes of regular files, likewise
SHOW_LIMIT = 1 << 20  # `diff` shows files up to this size line by line
CHUNK = 1 << 20
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class CopyError(BottleError):
    """Copy mode cannot do what was asked; the text says why and what to do."""


class _Refused(Exception):
    """A change that must not be written, found while writing it (the text says why)."""


def copy_path(state: StateDir) -> Path:
    return state.path / COPY


# An entry: ("d",) a folder, ("f", executable, sha256) a regular file, ("l", target) a symbolic link.
Entry = tuple[str, ...]


def _hash_fd(fd: int, budget: list[int], sink: int | None = None) -> str:
    h = hashlib.sha256()
    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            return h.hexdigest()
        budget[0] -= len(chunk)
        if budget[0] < 0:
            raise CopyError(f"more than {MAX_BYTES >> 30} GiB of files: too large for copy mode")
        h.update(chunk)
        if sink is not None:
            os.write(sink, chunk)


def _entry_of(dir_fd: int, e: os.DirEntry[str], budget: list[int], sink: int | None = None) -> Entry | None:
    """What an entry is (reading a file's content by descriptor, never through a link); None: neither a
    folder, a regular file nor a link (a FIFO, a socket, a device: never copied)."""
    st = e.stat(follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        return ("d",)
    if stat.S_ISLNK(st.st_mode):
        return ("l", os.readlink(e.name, dir_fd=dir_fd))
    if not stat.S_ISREG(st.st_mode):
        return None
    fd = os.open(e.name, _FILE, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return ("f", "x" if st.st_mode & 0o111 else "-", _hash_fd(fd, budget, sink))
    finally:
        os.close(fd)


def _tree(root: Path, *, what: str) -> tuple[dict[str, Entry], list[str]]:
    """Every entry under root (folders, regular files, links) and what could not be read."""
    walk = Walk(root, max_entries=MAX_FILES)
    out: dict[str, Entry] = {}
    unread: list[str] = []
    budget = [MAX_BYTES]
    for d in walk:
        for e in d.entries:
            try:
                got = _entry_of(d.fd, e, budget)
            except CopyError:
                raise
            except OSError:
                unread.append(d.path(e.name))
                continue
            if got is not None:
                out[d.path(e.name)] = got
    if walk.truncated:
        raise CopyError(f"{what} {root} holds more than {MAX_FILES} entries or is too deep: too large for copy mode")
    if walk.unreadable:
        unread.append(f"({walk.unreadable} folders)")
    return out, unread


# -- at start: the copy --------------------------------------------------------------------------------------
def create(state: StateDir, workspace: Path, ids: RuntimeIds) -> None:
    """The bottle's copy of the workspace, and what it held (copy-base.json). Owned by the agent under root;
    otherwise handed over by the backend before the agent runs (RuntimeIds.needs_helper)."""
    dest = copy_path(state)
    dest.mkdir(mode=0o755)
    base: dict[str, Entry] = {}
    budget = [MAX_BYTES]
    walk = Walk(workspace, max_entries=MAX_FILES)
    for d in walk:
        here = dest / d.rel if d.rel else dest
        for e in d.entries:
            rel = d.path(e.name)
            try:
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    (here / e.name).mkdir(mode=0o755)
                    base[rel] = ("d",)
                elif stat.S_ISLNK(st.st_mode):
                    target = os.readlink(e.name, dir_fd=d.fd)
                    (here / e.name).symlink_to(target)
                    base[rel] = ("l", target)
                elif stat.S_ISREG(st.st_mode):
                    mode = 0o755 if st.st_mode & 0o111 else 0o644
                    out = os.open(here / e.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
                    try:
                        got = _entry_of(d.fd, e, budget, sink=out)
                    finally:
                        os.close(out)
                    if got is not None:
                        base[rel] = got
            except CopyError as exc:
                raise CopyError(f"workspace {workspace}: {exc}") from None
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                    raise  # the state dir's disk, not the workspace: the CLI names it and its fix
                raise CopyError(
                    f"cannot copy {workspace / rel} ({exc.strerror}): make it readable, or use a git repository "
                    "(worktree mode)"
                ) from None
        if walk.truncated:
            break
    if walk.truncated:
        raise CopyError(
            f"workspace {workspace} holds more than {MAX_FILES} entries or is too deep for copy mode: make it a git "
            'repository (worktree mode), or set workspace_mode = "mount"'
        )
    write_private(state.path / BASE, json.dumps(base, sort_keys=True) + "\n")
    if os.getuid() == 0:
        for d in Walk(dest):
            for e in d.entries:
                os.chown(e.name, ids.agent_uid, ids.agent_gid, dir_fd=d.fd, follow_symlinks=False)
        os.chown(dest, ids.agent_uid, ids.agent_gid)


# -- what the agent changed ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    path: str
    kind: str  # added | changed | deleted
    old: Entry | None  # what the copy held at start
    new: Entry | None  # what it holds now


def _base(state: StateDir) -> dict[str, Entry]:
    try:
        raw = json.loads((state.path / BASE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CopyError(f"{state.slug}: its record of what the copy held ({BASE}) is missing or damaged") from None
    return {k: tuple(v) for k, v in raw.items()}


def _agent_tree(state: StateDir) -> Path:
    tree = copy_path(state)
    if tree.is_symlink() or not tree.is_dir():
        raise CopyError(f"{state.slug} has no copy of its workspace ({tree}): it is not a copy-mode bottle")
    return tree


def changes(state: StateDir) -> tuple[list[Change], list[str]]:
    """What the agent changed in its copy since the start (or the last apply), and what it made unreadable."""
    tree = _agent_tree(state)
    base = _base(state)
    now, unread = _tree(tree, what="the copy")
    out = []
    for path in sorted(set(base) | set(now)):
        old, new = base.get(path), now.get(path)
        if old == new or (old == ("d",) and new == ("d",)):
            continue
        kind = "added" if old is None else "deleted" if new is None else "changed"
        out.append(Change(path, kind, old, new))
    return out, unread


def inert(path: str, entry: Entry | None, read: bytes | None = None) -> str | None:
    """Why an entry must not reach the operator's tree as it is, or None (shape.inert, strictly)."""
    if entry is None:
        return None
    return shape.inert(path, entry[0], target=entry[1] if entry[0] == "l" else "", data=read)


def pending(state: StateDir) -> str | None:
    """What removing a copy-mode bottle would lose: its changes not applied (for cleanup and `ls`)."""
    try:
        found, _ = changes(state)
    except BottleError:
        return None
    if not found:
        return None
    return f"{len(found)} changes not applied (`claude-bottle apply {state.slug}`)"


# -- reading and writing by descriptor -----------------------------------------------------------------------
@contextlib.contextmanager
def _folder(root: Path, parts: list[str], *, make: bool = False, owner: tuple[int, int] | None = None) -> Iterator[int]:
    """A folder under root, each step opened without following a link (made when `make`)."""
    fd = os.open(root, _DIR)
    try:
        for part in parts:
            try:
                nxt = os.open(part, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if not make:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, _DIR, dir_fd=fd)
                if owner is not None:
                    os.fchown(nxt, *owner)
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def _read(root: Path, path: str, limit: int) -> bytes | None:
    parts = path.split("/")
    try:
        with _folder(root, parts[:-1]) as d:
            fd = os.open(parts[-1], _FILE, dir_fd=d)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    return None
                return os.read(fd, limit)
            finally:
                os.close(fd)
    except OSError:
        return None


def _current(root: Path, path: str) -> Entry | None:
    """What the operator's tree holds at path now (None: nothing, or not something copy mode handles)."""
    parts = path.split("/")
    try:
        with _folder(root, parts[:-1]) as d:
            st = os.stat(parts[-1], dir_fd=d, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                return ("d",)
            if stat.S_ISLNK(st.st_mode):
                return ("l", os.readlink(parts[-1], dir_fd=d))
            if not stat.S_ISREG(st.st_mode):
                return ("?",)
            fd = os.open(parts[-1], _FILE, dir_fd=d)
            try:
                return ("f", "x" if st.st_mode & 0o111 else "-", _hash_fd(fd, [MAX_BYTES]))
            finally:
                os.close(fd)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return ("?",)
    except OSError:
        return ("?",)


def _not_running(state: StateDir, verb: str) -> None:
    record = state.read()
    if record.status in ("running", "creating") and not state.abandoned(record):
        raise CopyError(
            f"{state.slug} is running: stop it first (`claude-bottle stop {state.slug}`), so what you {verb} is what "
            "it finished with"
        )


# -- diff and apply ------------------------------------------------------------------------------------------
def diff(state: StateDir, *, stat_only: bool = False) -> str:
    """The agent's changes against the workspace, as a list (`--stat`) or with each text file's lines."""
    record = state.read()
    workspace = Path(record.workspace or ".")
    found, unread = changes(state)
    tree = _agent_tree(state)
    lines = [f"{c.kind[0].upper()} {c.path}" for c in found]
    if unread:
        lines.append(f"(unreadable in the copy: {', '.join(unread[:10])})")
    if stat_only or not found:
        return ("\n".join(lines) or "no changes") + "\n"
    out = ["\n".join(lines), ""]
    for c in found:
        if "f" not in ((c.old or ("",))[0], (c.new or ("",))[0]):
            continue
        old = _read(workspace, c.path, SHOW_LIMIT + 1) if c.old and c.old[0] == "f" else b""
        new = _read(tree, c.path, SHOW_LIMIT + 1) if c.new and c.new[0] == "f" else b""
        if old is None or new is None or len(old) > SHOW_LIMIT or len(new) > SHOW_LIMIT:
            out.append(f"{c.path}: too large or unreadable to show")
            continue
        try:
            a, b = old.decode("utf-8").splitlines(keepends=True), new.decode("utf-8").splitlines(keepends=True)
        except UnicodeDecodeError:
            out.append(f"Binary files a/{c.path} and b/{c.path} differ")
            continue
        out.append("".join(difflib.unified_diff(a, b, f"a/{c.path}", f"b/{c.path}")).rstrip("\n"))
    return "\n".join(out) + "\n"


def apply(state: StateDir) -> str:
    """The agent's changes written into the operator's workspace: only where the operator has not changed
    the same path since the copy was made, never through a link, never a repository (see `inert`)."""
    _not_running(state, "apply")
    record = state.read()
    workspace = Path(record.workspace or ".")
    if not workspace.is_dir() or workspace.is_symlink():
        raise CopyError(f"workspace {workspace} is gone (or a link now): restore it, then apply")
    manifest = Path(record.manifest_path) if record.manifest_path else None
    base = _base(state)
    found, unread = changes(state)
    tree = _agent_tree(state)
    st = workspace.stat()
    owner = (st.st_uid, st.st_gid) if os.getuid() == 0 else None
    from claude_bottle.git.worktree import hook_folders

    hooks = hook_folders(workspace)
    done: dict[str, int] = {"added": 0, "changed": 0, "deleted": 0}
    skipped: list[str] = []
    # Deepest first for deletions (a folder after what it held), shallowest first for the rest.
    order = sorted(found, key=lambda c: (c.kind == "deleted", -c.path.count("/") if c.kind == "deleted" else 0))
    for c in order:
        data = _read(tree, c.path, shape.HEAD_PEEK) if c.new and c.new[0] == "f" else None
        why = inert(c.path, c.new, data)
        if why is None and manifest is not None and workspace / c.path == manifest:
            why = "the manifest: read the agent's version in the copy and copy what you want by hand"
        if why is None:
            on_the_way = shape.repository_on_the_way(workspace, c.path)
            if on_the_way is not None:
                why = f"inside {on_the_way}, a repository of your workspace (git there would read it)"
        if why is None and any(h in ("", c.path) or c.path.startswith(h + "/") for h in hooks):
            why = "in the folder your git runs hooks from (core.hooksPath): review it and copy it by hand"
        if why is None:
            now = _current(workspace, c.path)
            if now not in (c.old, c.new):
                why = "changed in your workspace since the bottle started (keep yours, or copy the agent's by hand)"
            elif now == c.new:
                base_update(base, c)
                continue
        if why is None and c.old is not None and c.new is not None and c.old[0] != c.new[0]:
            why = f"the agent made a {_kind(c.old)} a {_kind(c.new)}: do it by hand"
        if why is None:
            try:
                _write(workspace, tree, c, owner)
            except _Refused as exc:
                why = str(exc)
            except OSError as exc:
                why = f"could not be written ({exc.strerror})"
        if why is not None:
            skipped.append(f"{c.path}: {why}")
            continue
        done[c.kind] += 1
        base_update(base, c)
    write_private(state.path / BASE, json.dumps(base, sort_keys=True) + "\n")
    total = sum(done.values())
    head = (
        f"applied {total} changes to {workspace} ({done['added']} added, {done['changed']} changed, "
        f"{done['deleted']} deleted)"
    )
    lines = [head, *(f"not applied: {s}" for s in skipped)]
    if unread:
        lines.append(f"not applied: unreadable in the copy (the agent made them so): {', '.join(unread[:10])}")
    return "\n".join(lines) + "\n"


def base_update(base: dict[str, Entry], c: Change) -> None:
    if c.new is None:
        base.pop(c.path, None)
    else:
        base[c.path] = c.new


def _kind(e: Entry) -> str:
    return {"d": "folder", "f": "file", "l": "link"}.get(e[0], "thing")


def _write(workspace: Path, tree: Path, c: Change, owner: tuple[int, int] | None) -> None:
    parts = c.path.split("/")
    name = parts[-1]
    with _folder(workspace, parts[:-1], make=c.new is not None, owner=owner) as d:
        if c.new is None:  # deleted by the agent, unchanged by the operator
            if c.old == ("d",):
                with contextlib.suppress(OSError):  # a folder still holding something stays
                    os.rmdir(name, dir_fd=d)
            else:
                os.unlink(name, dir_fd=d)
            return
        if c.new[0] == "d":
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=d)
                if owner is not None:
                    os.chown(name, *owner, dir_fd=d, follow_symlinks=False)
            return
        tmp = f".{name}.claude-bottle-apply"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=d)
        if c.new[0] == "l":
            os.symlink(c.new[1], tmp, dir_fd=d)
        else:
            mode = 0o755 if c.new[1] == "x" else 0o644
            out = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=d)
            try:
                with _folder(tree, parts[:-1]) as src_dir:
                    src = os.open(name, _FILE, dir_fd=src_dir)
                    try:
                        if not stat.S_ISREG(os.fstat(src).st_mode):
                            raise OSError(0, "no longer a regular file")
                        got = _hash_fd(src, [MAX_BYTES], sink=out)
                    finally:
                        os.close(src)
                if got != c.new[2]:
                    raise OSError(0, "changed while being read")
                if shape.is_head(name):  # judged on what was written, not on an earlier read of the copy
                    os.lseek(out, 0, os.SEEK_SET)
                    if shape.head_like(os.pread(out, shape.HEAD_PEEK, 0)):
                        raise _Refused("a HEAD file: git would take its folder for a repository")
                os.fchmod(out, mode)
            except BaseException:
                os.close(out)
                os.unlink(tmp, dir_fd=d)
                raise
            os.close(out)
        if owner is not None:
            os.chown(tmp, *owner, dir_fd=d, follow_symlinks=False)
        os.rename(tmp, name, src_dir_fd=d, dst_dir_fd=d)
