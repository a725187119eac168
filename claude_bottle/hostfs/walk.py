"""Walking and removing trees an agent wrote: iteratively (no recursion limit), by directory descriptor,
never following a symbolic link, within limits.

An agent controls what is under its workspace and its `~/.claude`: 1,000 nested folders, a folder it
made unreadable, a link swapped in mid-walk. Nothing here recurses, follows a link or holds more open
descriptors than the walk's depth limit, so no such tree can break a verb for this bottle or another.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Dir", "Walk", "remove_tree", "tree_size"]

MAX_DEPTH = 256  # a walk holds one descriptor per level
MAX_ENTRIES = 2_000_000
HOIST_DEPTH = 64  # remove_tree moves deeper folders up instead of descending further
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Dir:
    """One directory of a walk: its descriptor (open while the consumer looks at it), its path relative to
    the root, and its entries. Add names to `prune` to keep the walk out of those subdirectories."""

    fd: int
    rel: str
    entries: list[os.DirEntry[str]]
    prune: set[str] = field(default_factory=set)

    def path(self, name: str) -> str:
        return f"{self.rel}/{name}" if self.rel else name


class _Ref:
    """A parent's descriptor, closed once every child waiting on it has been opened."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.waiting = 0

    def release(self) -> None:
        self.waiting -= 1
        if self.waiting <= 0:
            os.close(self.fd)


class Walk:
    """Top-down, depth-first. `truncated` says a limit was hit (the walk did not see everything);
    `unreadable` counts folders that could not be opened."""

    def __init__(self, root: Path, *, max_depth: int = MAX_DEPTH, max_entries: int = MAX_ENTRIES) -> None:
        self.root = root
        self.max_depth = max_depth
        self.max_entries = max_entries
        self.truncated = False
        self.unreadable = 0
        self.seen = 0

    def __iter__(self) -> Iterator[Dir]:
        try:
            root_fd = os.open(self.root, _DIR_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError:  # a link (ELOOP), or no permission
            self.unreadable += 1
            return
        # (parent ref or None, name, rel, depth); the root has its descriptor already.
        stack: list[tuple[_Ref | None, str, str, int, int | None]] = [(None, "", "", 0, root_fd)]
        try:
            while stack:
                parent, name, rel, depth, fd = stack.pop()
                if fd is None:
                    assert parent is not None  # noqa: S101 - only the root comes with a descriptor
                    try:
                        fd = os.open(name, _DIR_FLAGS, dir_fd=parent.fd)
                    except OSError:
                        self.unreadable += 1
                        fd = None
                    finally:
                        parent.release()
                    if fd is None:
                        continue
                try:
                    with os.scandir(fd) as it:
                        entries = []
                        for e in it:
                            entries.append(e)
                            self.seen += 1
                            if self.seen > self.max_entries:
                                self.truncated = True
                                break
                except OSError:
                    self.unreadable += 1
                    os.close(fd)
                    continue
                d = Dir(fd, rel, entries)
                try:
                    yield d
                except GeneratorExit:
                    os.close(fd)
                    raise
                subdirs = [e.name for e in entries if _is_dir(e) and e.name not in d.prune]
                if self.truncated:
                    os.close(fd)
                    return
                if subdirs and depth + 1 > self.max_depth:
                    self.truncated = True
                    subdirs = []
                if not subdirs:
                    os.close(fd)
                    continue
                ref = _Ref(fd)
                ref.waiting = len(subdirs)
                for sub in reversed(subdirs):
                    stack.append((ref, sub, d.path(sub), depth + 1, None))
        finally:
            for parent, _name, _rel, _depth, fd in stack:  # an abandoned walk closes what it holds
                if fd is not None:
                    os.close(fd)
                elif parent is not None:
                    parent.release()


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def tree_size(root: Path) -> tuple[int, bool]:
    """Bytes the regular files under root take on disk (a sparse file counts what it holds), and whether
    the walk was complete."""
    walk = Walk(root)
    total = 0
    for d in walk:
        for e in d.entries:
            with contextlib.suppress(OSError):
                st = e.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    total += min(st.st_size, st.st_blocks * 512)
    return total, not walk.truncated and not walk.unreadable


def _open_for_removal(name: str, dir_fd: int) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        if os.getuid() == 0:
            raise
        # A folder made unreadable (chmod 000) by the agent, which shares our uid: make it ours to read,
        # through an O_PATH descriptor so a link swapped in cannot redirect the chmod.
        pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if not stat.S_ISDIR(os.fstat(pfd).st_mode):
                raise
            Path(f"/proc/self/fd/{pfd}").chmod(0o700)
        finally:
            os.close(pfd)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def remove_tree(path: Path) -> None:
    """Remove path and everything under it, however deep, never following a link out of it. Folders
    deeper than HOIST_DEPTH are moved up to the top of the tree and removed from there, so at most
    HOIST_DEPTH descriptors are open. Raises OSError for what could not be removed (after trying the rest)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        path.unlink()
        return
    parent_fd = os.open(path.parent, _DIR_FLAGS & ~os.O_NOFOLLOW)
    errors: list[OSError] = []
    try:
        root_fd = _open_for_removal(path.name, parent_fd)
        # frame: (fd, its name in the parent frame, subfolders still to remove)
        stack: list[tuple[int, str, list[str]]] = []
        hoisted = 0

        def enter(fd: int, name: str) -> None:
            if os.getuid() != 0:
                with contextlib.suppress(OSError):
                    os.fchmod(fd, 0o700)  # a folder left without write permission keeps its entries
            subdirs = []
            with os.scandir(fd) as it:
                for e in it:
                    if _is_dir(e):
                        subdirs.append(e.name)
                        continue
                    try:
                        os.unlink(e.name, dir_fd=fd)
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        errors.append(exc)
            stack.append((fd, name, subdirs))

        enter(root_fd, path.name)
        while stack:
            fd, name, subdirs = stack[-1]
            if subdirs:
                sub = subdirs.pop()
                if len(stack) >= HOIST_DEPTH:
                    top = f".claude-bottle-removing-{hoisted}"
                    hoisted += 1
                    try:
                        os.rename(sub, top, src_dir_fd=fd, dst_dir_fd=root_fd)
                        stack[0][2].append(top)
                    except OSError as exc:
                        errors.append(exc)
                    continue
                try:
                    child = _open_for_removal(sub, fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    errors.append(exc)
                    continue
                enter(child, sub)
                continue
            stack.pop()
            os.close(fd)
            parent = stack[-1][0] if stack else parent_fd
            try:
                os.rmdir(name, dir_fd=parent)
            except FileNotFoundError:
                pass
            except OSError as exc:
                errors.append(exc)
    finally:
        os.close(parent_fd)
    if errors:
        raise errors[0]
