"""What git (and Mercurial) take for a repository, as one rule for every copy of an agent's files the host
writes.

Git's discovery, at each folder: a `.git` there (a folder, or a file saying `gitdir:`), else the folder
itself when it holds a HEAD git accepts (`validate_headref`: a link whose target starts with `refs/`, a
file starting `ref:` and then `refs/`, or an object id) and `objects` and `refs` it can enter. Whatever
the folder's owner then finds in its config runs (`core.fsmonitor` at every `status`). So a copy of the
agent's files that the operator owns must hold no `.git` that is not a plain folder and no HEAD git would
accept: without one, nothing in it is a repository to git (a `.git` folder without its HEAD is not
either). Mercurial runs the hooks of a `.hg/hgrc` its user owns: a copy never carries a `.hg` at all.
`inert` says why an entry breaks that rule; the callers leave such entries out and name them.

Writing a harmless file *into* a repository is as bad (a `config` into a bare mirror, a hook into a
`.bare` git dir of a worktree layout): `repository_on_the_way` finds a folder on a path, in the tree being
written, that git would read as a repository (a HEAD it accepts), so callers refuse to write there.
"""

from __future__ import annotations

import contextlib
import os
import stat
import unicodedata
from pathlib import Path

__all__ = [
    "HEAD_PEEK",
    "head_like",
    "inert",
    "is_control",
    "is_dot_git",
    "is_head",
    "repository_on_the_way",
    "valid_head",
]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

HEAD_PEEK = 256  # bytes of a file named HEAD enough to tell whether git would accept it


def _fold(name: str) -> str:
    """A name as a case-folding, normalising disk would read it (a trailing dot or space dropped, as
    Windows does)."""
    return unicodedata.normalize("NFC", name).casefold().rstrip(". ")


def is_dot_git(name: str) -> bool:
    return _fold(name) == ".git"


def is_control(name: str) -> bool:
    """A repository's control folder by name: git's `.git`, Mercurial's `.hg`."""
    return _fold(name) in (".git", ".hg")


def is_head(name: str) -> bool:
    return _fold(name) == "head"


def head_like(data: bytes) -> bool:
    """Would git accept these first bytes of a HEAD file (a symbolic ref into refs/, or an object id)?"""
    if data.startswith(b"ref:"):
        return data[4:].lstrip().startswith(b"refs/")
    head = data[:40]
    return len(head) == 40 and all(c in b"0123456789abcdefABCDEF" for c in head)


def inert(path: str, kind: str, *, target: str = "", data: bytes | None = None, strict: bool = True) -> str | None:
    """Why an entry (kind: "d" folder, "f" file, "l" link with `target`; `data`: a file's first HEAD_PEEK
    bytes) must not be written where the operator owns it, or None. `strict` (a copy into the operator's
    own tree): nothing under a `.git` at all (a `git init` there later would keep its config). Otherwise (a
    copy in the state dir a verb reads, such as a checkout coming home for `diff`): `.git` folders may be,
    but no HEAD anywhere and no `.git` that is a file or a link."""
    parts = path.split("/")
    if any(_fold(p) == ".hg" for p in parts):
        return "a .hg: Mercurial would run its hooks"
    if strict and any(is_dot_git(p) for p in parts):
        return "a .git: git would read it as a repository"
    if is_dot_git(parts[-1]) and kind != "d":
        return "a .git that is not a folder: git would follow it to a repository"
    if is_head(parts[-1]):
        if kind == "l" and target.startswith("refs/"):
            return "a HEAD link: git would take its folder for a repository"
        if kind == "f" and data is not None and head_like(data):
            return "a HEAD file: git would take its folder for a repository"
    return None


def valid_head(dir_fd: int, name: str = "HEAD") -> bool:
    """Would git take this entry as a repository's HEAD (`validate_headref`)? A folder holding one is a
    repository to git (its objects and refs may be anything git can enter: links, even files)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    if stat.S_ISLNK(st.st_mode):
        try:
            return os.readlink(name, dir_fd=dir_fd).startswith("refs/")
        except OSError:
            return True  # cannot tell: count it
    if not stat.S_ISREG(st.st_mode):
        return False  # a folder, or something git reads no HEAD from (a FIFO only blocks it)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return True  # unreadable to us, perhaps not to git: count it
    try:
        return head_like(os.read(fd, HEAD_PEEK))
    finally:
        os.close(fd)


def repository_on_the_way(root: Path, path: str) -> str | None:
    """The first folder from `root` (itself included) down to the parent of `path` that git would read as a
    repository (it holds a HEAD git accepts, or a `commondir`), or that is a `.git` or `.hg`, as a path
    relative to root ("." for root); None when there is none. Walked by descriptor, never through a link; a
    folder that does not exist yet ends the walk (nothing below it exists either)."""
    parts = path.split("/")[:-1]
    fd = os.open(root, _DIR)
    try:
        here: list[str] = []
        while True:
            if valid_head(fd) or _has(fd, "commondir"):
                return "/".join(here) or "."
            if not parts:
                return None
            part = parts.pop(0)
            here.append(part)
            if is_control(part):
                return "/".join(here)
            try:
                nxt = os.open(part, _DIR, dir_fd=fd)
            except OSError:
                return None
            os.close(fd)
            fd = nxt
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def _has(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return True
