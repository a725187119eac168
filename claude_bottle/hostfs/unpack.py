"""Unpack a tar stream someone else wrote (an agent's files, coming home) into a fresh folder, by directory
descriptor: every folder on the way is opened without following a link, so nothing can land outside,
whatever the archive holds and whatever Python's tarfile filters (absent before 3.11.4, Debian 12's
3.11.2) or `realpath` would say.

Kept: folders, regular files (owner read and write; no set-id, sticky, or group and other write bits) and
symbolic links, as links (a repository may hold one pointing anywhere: nothing here follows it, and a
member whose folder is one, by any spelling, is refused). Refused and named: absolute names, `..`, hard
links, devices, pipes and anything else. Owners are never taken from the archive.

Within budgets (`Limits`): the bytes read from the stream (headers, data and whatever is skipped: what
is written is a part of it), the members, their depth, the folders opened, and each member's headers.
Past one the trip stops where it is: what was unpacked stays, the member it stopped at is not kept, and
`Unpacked.stopped` says why. A sparse member (which expands holes into data here) stops it too: tar sends
one only when asked to (`--sparse`), which nothing here does. The folders of the member being written stay
open from the root down, so a member in the same folder as the one before opens nothing, and a tar in
tar's own order opens each folder once: the work is linear in the archive, however deep.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tarfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from claude_bottle.git import shape
from claude_bottle.hostfs.walk import MAX_DEPTH, MAX_ENTRIES

__all__ = ["MAX_BYTES", "MAX_HEADER", "Limits", "Unpacked", "unpack"]

# What one trip home may carry: room for a working tree and its build output, and within what a modest link
# moves before the transfer's 30-minute deadline (8 GiB is 4.5 MB/s for 1,800 s). Never more than half the
# free space where it is unpacked.
MAX_BYTES = 8 * 1024**3
MAX_HEADER = 1024 * 1024  # one member's headers: a long name, PAX records, a sparse map
SKIPPED_KEPT = 10_000  # refused members named one by one; past that they are counted
_SHOWN = 300  # characters of a name kept in the list of refusals and in a reason
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """The budgets of one trip: bytes read from the stream, members, names deep (walk.py's limits: a tree
    deeper or larger than its walks go could not be judged whole afterwards). Folder opens are held to the
    member budget too: a tar in tar's own order opens each folder once."""

    bytes: int = MAX_BYTES
    members: int = MAX_ENTRIES
    depth: int = MAX_DEPTH


@dataclass
class Unpacked:
    """What a trip refused (member names, as in the archive) and, if it stopped before the end, why: a
    budget (`over_budget`: the same archive would stop there again) or a stream that is not a whole tar."""

    skipped: list[str] = field(default_factory=list)
    stopped: str | None = None
    over_budget: bool = False
    _more: int = 0

    def refuse(self, name: str) -> None:
        if len(self.skipped) < SKIPPED_KEPT:
            self.skipped.append(_shown(name))
        else:
            self._more += 1

    def _close(self) -> None:
        if self._more:
            self.skipped.append(f"... and {self._more:,} more")


class _Stop(Exception):
    """The trip ends here, and why."""

    def __init__(self, reason: str, *, budget: bool = True) -> None:
        super().__init__(reason)
        self.reason, self.budget = reason, budget


def _shown(name: str) -> str:
    return name if len(name) <= _SHOWN else name[:_SHOWN] + "..."


def _size(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB" if n >= 1024**2 else f"{n} bytes"


class _Meter:
    """The stream, counted: past the byte budget, or past MAX_HEADER read for one member's headers (while
    `headers()` is on), reading stops the trip."""

    def __init__(self, raw: IO[bytes], budget: int, why: str) -> None:
        self.raw, self.left, self.why = raw, budget, why
        self.header_left: int | None = None

    def headers(self, on: bool) -> None:
        self.header_left = MAX_HEADER if on else None

    def read(self, size: int = _CHUNK) -> bytes:
        data = self.raw.read(size if size >= 0 else _CHUNK)
        self.left -= len(data)
        if self.left < 0:
            raise _Stop(self.why)
        if self.header_left is not None:
            self.header_left -= len(data)
            if self.header_left < 0:
                raise _Stop(f"a member's headers of more than {_size(MAX_HEADER)}")
        return data


def _spelled(part: str) -> str:
    """A name as a case-insensitive, normalising disk would read it (per name: normalisation never crosses
    a `/`)."""
    return unicodedata.normalize("NFC", part).casefold()


def _parts(name: str) -> list[str] | None:
    """The member's path components, or None if it names anything outside (absolute, `..`, empty)."""
    if name.startswith("/") or "\0" in name:
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return parts


class _Folders:
    """The folders of the member being written, held open from the root down; each opened without
    following a link, made as needed, and refused if, by its spelling, it is a link this archive made.
    Spellings are numbered per folder (parent's number, spelled name), so each check is one lookup."""

    def __init__(self, root: int, max_opens: int) -> None:
        self.root, self.max_opens, self.opens = root, max_opens, 0
        self.names: list[str] = []
        self.fds: list[int] = []
        self.ids: list[int] = []
        self.spellings: dict[tuple[int, str], int] = {}
        self.links: set[tuple[int, str]] = set()

    def enter(self, parts: list[str]) -> int | None:
        """A descriptor of the folder `parts` (owned here: valid until the next call), or None if its way
        passes a link this archive made. Raises OSError for a link or a non-folder found on disk."""
        if parts != self.names:
            same = 0
            while same < min(len(parts), len(self.names)) and parts[same] == self.names[same]:
                same += 1
            self._drop(same)
            for part in parts[same:]:
                key = (self.ids[-1] if self.ids else 0, _spelled(part))
                if key in self.links:
                    return None
                self.opens += 1
                if self.opens > self.max_opens:
                    raise _Stop(f"more than {self.max_opens:,} folder opens (a tar in its own order opens each once)")
                parent = self.fds[-1] if self.fds else self.root
                with contextlib.suppress(FileExistsError):  # (a link there stays one: the open refuses it)
                    os.mkdir(part, 0o700, dir_fd=parent)
                fd = os.open(part, _DIR, dir_fd=parent)
                self.names.append(part)
                self.fds.append(fd)
                self.ids.append(self.spellings.setdefault(key, len(self.spellings) + 1))
        return self.fds[-1] if self.fds else self.root

    def link(self, parts: list[str]) -> None:
        """A link was made at `parts` (its folder is the one entered last)."""
        self.links.add((self.ids[-1] if self.ids else 0, _spelled(parts[-1])))

    def _drop(self, keep: int) -> None:
        while len(self.fds) > keep:
            os.close(self.fds.pop())
            self.names.pop()
            self.ids.pop()

    def close(self) -> None:
        self._drop(0)


def _admitted(member: tarfile.TarInfo, parts: list[str] | None) -> bool:
    """May this member be written, judged by its name and kind alone, before anything of it is? The one place
    for such a rule. (Where it lands is judged as it is written: never through a link.)"""
    if parts is None:
        return False  # absolute, `..`, empty
    if not (member.isdir() or member.isfile() or member.issym()):
        return False  # not hard links, devices, pipes, ...
    # Nothing that makes a folder of the copy a repository to git (the operator owns it): no `.git` that is
    # a file or a link, no HEAD link into refs/ (a HEAD file is judged by its first bytes: _peeked).
    kind = "d" if member.isdir() else "l" if member.issym() else "f"
    return shape.inert("/".join(parts), kind, target=member.linkname, strict=False) is None


class _Peeked:
    """A member's data with its first bytes already read (to judge a HEAD file), read on as one stream."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self.head, self.rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.rest.read(n)
        if n < 0:
            out, self.head = self.head, b""
            return out + self.rest.read()
        out, self.head = self.head[:n], self.head[n:]
        return out


def _peeked(parts: list[str], source: IO[bytes] | None) -> tuple[bool, IO[bytes] | None]:
    """Is this file a HEAD git would accept (then it is refused)? And its data, whole, to write otherwise."""
    if source is None or not shape.is_head(parts[-1]):
        return False, source
    head = source.read(shape.HEAD_PEEK)
    if shape.head_like(head):
        return True, source
    return False, _Peeked(head, source)  # type: ignore[return-value]


def _sparse(member: tarfile.TarInfo) -> bool:
    return member.issparse() or any(k.startswith("GNU.sparse.") for k in member.pax_headers)


def _free_half(dest: Path) -> int | None:
    try:
        st = os.statvfs(dest)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize // 2


def unpack(stream: IO[bytes], dest: Path, *, limits: Limits | None = None) -> Unpacked:
    """Unpack the tar on `stream` into `dest` (made here, and must not exist), within `limits`."""
    limits = limits or Limits()
    dest.mkdir(mode=0o700)
    budget, why = limits.bytes, f"more than {_size(limits.bytes)} to carry"
    half = _free_half(dest)
    if half is not None and half < budget:
        budget, why = half, f"more than half the free space here ({_size(half)})"
    meter = _Meter(stream, budget, why)
    out = Unpacked()
    root = os.open(dest, _DIR)
    folders = _Folders(root, limits.members)
    name: str | None = None  # the member being handled
    count = 0
    try:
        meter.headers(True)  # opening reads the first member's headers
        with tarfile.open(fileobj=meter, mode="r|") as tar:  # type: ignore[call-overload]
            while True:
                meter.headers(True)
                name = None
                member = tar.next()
                meter.headers(False)
                if member is None:
                    break
                tar.members.clear()  # a stream's reader keeps every member otherwise: memory would grow with it
                name = member.name
                count += 1
                if count > limits.members:
                    raise _Stop(f"more than {limits.members:,} members")
                parts = _parts(member.name)
                if parts is not None and len(parts) > limits.depth:
                    raise _Stop(f"a member more than {limits.depth} names deep")
                if _sparse(member):
                    raise _Stop("a sparse member (tar sends one only when asked to)")
                # The data tarfile would skip is read here, within the budget, whatever becomes of the member.
                has_data = member.isfile() or member.type not in tarfile.SUPPORTED_TYPES
                source = tar.extractfile(member) if has_data else None
                refused_head = False
                if member.isfile() and parts is not None:
                    refused_head, source = _peeked(parts, source)
                if refused_head or not _admitted(member, parts):
                    out.refuse(member.name)
                else:
                    assert parts is not None  # noqa: S101 - _admitted says so
                    try:
                        written = _one(member, source, folders, parts)
                    except OSError as exc:
                        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                            raise _Stop("no space left here") from exc
                        written = False  # through a link on disk (ELOOP, ENOTDIR), or unwritable
                    if not written:
                        out.refuse(member.name)
                while source is not None and source.read(_CHUNK):
                    pass
    except _Stop as exc:
        out.stopped, out.over_budget = exc.reason + (f", at {_shown(name)!r}" if name else ""), exc.budget
        if name:
            out.refuse(name)
    except (tarfile.TarError, EOFError, ValueError, OverflowError) as exc:  # what tarfile raises on a broken one
        out.stopped = f"not a whole tar stream ({_shown(str(exc) or type(exc).__name__)})"
    finally:
        folders.close()
        os.close(root)
    out._close()
    return out


def _clear(name: str, dir_fd: int) -> None:
    """Whatever an earlier member left at `name` (a later member of the same name replaces it), unless it
    is a folder."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            os.unlink(name, dir_fd=dir_fd)


def _one(member: tarfile.TarInfo, source: IO[bytes] | None, folders: _Folders, parts: list[str]) -> bool:
    """Write one member; False if its way passes a link this archive made."""
    if member.isdir():
        return folders.enter(parts) is not None
    parent = folders.enter(parts[:-1])
    if parent is None:
        return False
    name = parts[-1]
    _clear(name, parent)
    if member.issym():
        os.symlink(member.linkname, name, dir_fd=parent)
        folders.link(parts)
        return True
    mode = (member.mode & 0o755) | 0o600
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
    try:
        with os.fdopen(fd, "wb") as out:
            while source is not None and (chunk := source.read(_CHUNK)):
                out.write(chunk)
            os.fchmod(out.fileno(), mode)  # not narrowed by this process's umask
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=parent)  # half a file is never left as if it were whole
        raise
    with contextlib.suppress(OSError):
        os.utime(name, (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)
    return True
