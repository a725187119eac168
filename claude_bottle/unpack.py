"""Unpack a tar stream someone else wrote (an agent's files, coming home) into a fresh folder, by directory
descriptor: every folder on the way is opened without following a link, so nothing can land outside,
whatever the archive holds and whatever Python's tarfile filters (absent before 3.11.4, Debian 12's
3.11.2) or `realpath` would say.

Kept: folders, regular files (owner read and write; no set-id, sticky, or group and other write bits) and
symbolic links, as links (a repository may hold one pointing anywhere: nothing here follows it, and a
member whose folder is one, by any spelling, is refused). Refused and named: absolute names, `..`, hard
links, devices, pipes and anything else. Owners are never taken from the archive.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import unicodedata
from pathlib import Path
from typing import IO

__all__ = ["unpack"]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _spelled(parts: list[str]) -> str:
    """A path as a case-insensitive, normalising disk would read it."""
    return unicodedata.normalize("NFC", "/".join(parts)).casefold()


def _parts(name: str) -> list[str] | None:
    """The member's path components, or None if it names anything outside (absolute, `..`, empty)."""
    if name.startswith("/") or "\0" in name:
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return parts


def _folder(root_fd: int, parts: list[str]) -> int:
    """A descriptor of the folder `parts` under root, made as needed, never through a link."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                nxt = os.open(part, _DIR, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(part, 0o700, dir_fd=fd)
                nxt = os.open(part, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _clear(name: str, dir_fd: int) -> None:
    """Whatever an earlier member left at `name` (a later member of the same name replaces it), unless it
    is a folder."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            os.unlink(name, dir_fd=dir_fd)


def unpack(stream: IO[bytes], dest: Path) -> list[str]:
    """Unpack the tar on `stream` into `dest` (made here, and must not exist); returns the members refused."""
    dest.mkdir(mode=0o700)
    skipped: list[str] = []
    links: set[str] = set()
    root = os.open(dest, _DIR)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                parts = _parts(member.name)
                if parts is None or any(_spelled(parts[:k]) in links for k in range(1, len(parts))):
                    skipped.append(member.name)
                    continue
                if not (member.isdir() or member.isfile() or member.issym()):
                    skipped.append(member.name)  # hard links, devices, pipes, ...
                    continue
                try:
                    _one(tar, member, root, parts, links)
                except OSError:
                    skipped.append(member.name)  # through a link on disk (ELOOP, ENOTDIR), or unwritable
    finally:
        os.close(root)
    return skipped


def _one(tar: tarfile.TarFile, member: tarfile.TarInfo, root: int, parts: list[str], links: set[str]) -> None:
    if member.isdir():
        os.close(_folder(root, parts))
        return
    parent = _folder(root, parts[:-1])
    name = parts[-1]
    try:
        _clear(name, parent)
        if member.issym():
            os.symlink(member.linkname, name, dir_fd=parent)
            links.add(_spelled(parts))
            return
        source = tar.extractfile(member)
        mode = (member.mode & 0o755) | 0o600
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
        with os.fdopen(fd, "wb") as out:
            if source is not None:
                shutil.copyfileobj(source, out, 1024 * 1024)
            os.fchmod(out.fileno(), mode)  # not narrowed by this process's umask
        with contextlib.suppress(OSError):
            os.utime(name, (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)
    finally:
        os.close(parent)
