"""What git takes for a repository, as one rule for every copy of an agent's files the host writes.

Git's discovery, at each folder: a `.git` there (a folder, or a file saying `gitdir:`), else the folder
itself when it holds a HEAD git accepts (`validate_headref`: a link whose target starts with `refs/`, a
file starting `ref:` and then `refs/`, or an object id) and `objects` and `refs` it can enter. Whatever
the folder's owner then finds in its config runs (`core.fsmonitor` at every `status`). So a copy of the
agent's files that the operator owns must hold no `.git` that is not a plain folder and no HEAD git would
accept: without one, nothing in it is a repository to git (a `.git` folder without its HEAD is not
either). `inert` says why an entry breaks that rule; the callers leave such entries out and name them.
"""

from __future__ import annotations

import unicodedata

__all__ = ["HEAD_PEEK", "head_like", "inert", "is_dot_git", "is_head"]

HEAD_PEEK = 256  # bytes of a file named HEAD enough to tell whether git would accept it


def _fold(name: str) -> str:
    """A name as a case-folding, normalising disk would read it (a trailing dot or space dropped, as
    Windows does)."""
    return unicodedata.normalize("NFC", name).casefold().rstrip(". ")


def is_dot_git(name: str) -> bool:
    return _fold(name) == ".git"


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
