"""The host's view of a worktree bottle's work: the checkout's own objects (each checked against its name) and
files (walked and hashed by descriptor, never through a link) copied into a view repository of the verb's
own, so that git combines what was read and never reads the agent's checkout itself."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from claude_bottle import process
from claude_bottle.bottle.state import StateDir
from claude_bottle.git import command
from claude_bottle.hostfs.walk import Walk, remove_tree

__all__ = ["Work", "reading"]

MAX_COPY = 8 << 30  # bytes one verb reads out of the checkout (objects and files), at most


CHUNK = 1 << 20


OID = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def _opened(root: Path, *parts: str) -> Iterator[int]:
    """A directory under the checkout, each step opened without following a link."""
    fds = [os.open(root, _DIR)]
    try:
        for part in parts:
            fds.append(os.open(part, _DIR, dir_fd=fds[-1]))
        yield fds[-1]
    finally:
        for fd in fds:
            os.close(fd)


def _read_file(dir_fd: int, name: str, limit: int) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    finally:
        os.close(fd)


def _branch_tip(checkout: Path, branch: str) -> str | None:
    """The branch's commit id, read as text from the checkout's ref files (loose, then packed)."""
    parts = ["refs", "heads", *branch.split("/")]
    dirs, leaf = parts[:-1], parts[-1]
    with contextlib.suppress(OSError), _opened(checkout, ".git", *dirs) as fd:
        raw = _read_file(fd, leaf, 200)
        if raw is not None and OID.fullmatch(raw.decode(errors="replace").strip()):
            return raw.decode().strip()
    with contextlib.suppress(OSError), _opened(checkout, ".git") as fd:
        packed = _read_file(fd, "packed-refs", 64 << 20) or b""
        for line in packed.decode(errors="replace").splitlines():
            oid, _, ref = line.partition(" ")
            if ref == f"refs/heads/{branch}" and OID.fullmatch(oid):
                return oid
    return None


class _Budget:
    """Bytes read out of the checkout by one verb, at most MAX_COPY (an agent can fill a disk: not ours)."""

    def __init__(self) -> None:
        self.left = MAX_COPY

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise command.WorktreeError(f"the bottle's work is over {MAX_COPY >> 30} GiB: not read")


def _open_regular(dir_fd: int, name: str) -> int | None:
    """A regular file under a directory descriptor, never through a link, never blocking (a FIFO)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _chunks(fd: int, size: int, budget: _Budget) -> Iterator[bytes]:
    """Exactly `size` bytes of fd, in pieces; a file that shrank while read is an error (read again)."""
    left = size
    while left:
        piece = os.read(fd, min(CHUNK, left))
        if not piece:
            raise command.WorktreeError("a file changed while it was read: run the verb again (or stop the bottle)")
        budget.take(len(piece))
        left -= len(piece)
        yield piece


class _Objects:
    """Objects written into the view by the host, each named by the hash of what was actually read."""

    def __init__(self, view: Path, fmt: str) -> None:
        self.dir = view / "objects"
        self.fmt = fmt

    def _store(self, oid: str, compressed: Path) -> str:
        target = self.dir / oid[:2] / oid[2:]
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            compressed.unlink()
        else:
            compressed.replace(target)
        return oid

    def blob(self, pieces: Iterable[bytes], size: int) -> str:
        h = hashlib.new("sha256" if self.fmt == "sha256" else "sha1")
        z = zlib.compressobj(1)
        tmp = self.dir / f"tmp-blob-{os.getpid()}"
        with tmp.open("wb") as out:
            header = b"blob %d\0" % size
            h.update(header)
            out.write(z.compress(header))
            for piece in pieces:
                h.update(piece)
                out.write(z.compress(piece))
            out.write(z.flush())
        return self._store(h.hexdigest(), tmp)

    def loose(self, fd: int, size: int, name: str, budget: _Budget) -> None:
        """One of the agent's loose objects, kept only if its content hashes to its name."""
        h = hashlib.new("sha256" if self.fmt == "sha256" else "sha1")
        z = zlib.decompressobj()
        tmp = self.dir / f"tmp-loose-{os.getpid()}"
        with tmp.open("wb") as out:
            for piece in _chunks(fd, size, budget):
                out.write(piece)
                data = z.decompress(piece, CHUNK)
                while data:
                    budget.take(len(data))
                    h.update(data)
                    data = z.decompress(z.unconsumed_tail, CHUNK) if z.unconsumed_tail else b""
        if h.hexdigest() != name or not z.eof:
            tmp.unlink()
            raise command.WorktreeError(f"the bottle's object {name[:12]} does not hold what its name says: not read")
        self._store(name, tmp)


def _copy_objects(checkout: Path, view: Path, objects: _Objects, budget: _Budget) -> None:
    """The checkout's own objects into the view, each checked: a loose object must hash to its name, a
    pack is indexed anew with every object checked (the agent's `.idx` is never read). `info/` never."""
    with _opened(checkout, ".git", "objects") as objects_fd:
        for sub in os.listdir(objects_fd):  # noqa: PTH208 - by descriptor: no link on the way is followed
            if not (re.fullmatch(r"[0-9a-f]{2}", sub) or sub == "pack"):
                continue
            try:
                src_dir = os.open(sub, _DIR, dir_fd=objects_fd)
            except OSError:
                continue
            try:
                for name in os.listdir(src_dir):  # noqa: PTH208 - by descriptor
                    loose = sub != "pack" and re.fullmatch(r"[0-9a-f]{38}|[0-9a-f]{62}", name)
                    if not (loose or re.fullmatch(r"pack-[0-9a-f]{40,64}\.pack", name)):
                        continue
                    fd = _open_regular(src_dir, name)
                    if fd is None:
                        continue
                    try:
                        size = os.fstat(fd).st_size
                        if loose:
                            objects.loose(fd, size, sub + name, budget)
                        else:
                            data = b"".join(_chunks(fd, size, budget))
                            command.git(
                                "--git-dir", view, "index-pack", "--stdin", "--strict", stdin=data, isolated=True
                            )
                    finally:
                        os.close(fd)
            finally:
                os.close(src_dir)


@dataclass(frozen=True)
class Work:
    """A worktree bottle's work as the host sees it now (its view exists while the verb runs)."""

    view: Path
    project: Path
    branch: str
    onto: str
    base: str
    tip: str | None  # the branch's commit (None: the agent deleted its branch)
    tree: str  # the checkout's files as a tree, committed or not
    commits: tuple[tuple[str, str], ...]  # (id, subject) from base to tip, newest first
    uncommitted: bool  # its files differ from its last commit

    def git(self, *args: str | Path, check: bool = True, stdin: bytes | None = None) -> process.Output:
        return command.git("--git-dir", self.view, *args, isolated=True, check=check, stdin=stdin)


@contextlib.contextmanager
def reading(state: StateDir) -> Iterator[Work]:
    """The bottle's commits and files, read into a view of the host's own (made for this verb and removed
    after it), without git ever walking or reading the agent's checkout itself."""
    info = command.info_of(state)
    checkout = command.checkout_path(state)
    if not checkout.is_dir() or checkout.is_symlink():
        raise command.WorktreeError(f"{state.slug}: its checkout {checkout} is gone")
    view = Path(tempfile.mkdtemp(prefix="worktree-view-", dir=state.path))
    try:
        fmt = str(info.get("object_format") or "sha1")
        command.git("init", "-q", "--bare", "--template=", f"--object-format={fmt}", view, isolated=True)
        (view / "objects" / "info" / "alternates").write_text(f"{info['objects']}\n", encoding="utf-8")
        budget, objects = _Budget(), _Objects(view, fmt)
        _copy_objects(checkout, view, objects, budget)
        base, branch = str(info["base"]), str(info["branch"])
        tip = _branch_tip(checkout, branch)
        if tip is not None:
            known = command.git("--git-dir", view, "cat-file", "-e", f"{tip}^{{commit}}", isolated=True, check=False)
            tip = tip if known.returncode == 0 else None  # naming no commit the view can read: none
        tree = _snapshot(view, checkout, tip or base, objects, budget)
        log = (
            command.git("--git-dir", view, "log", "--format=%H %s", f"{base}..{tip}", isolated=True).stdout
            if tip
            else b""
        )
        lines = log.decode(errors="replace").splitlines()
        commits = tuple((oid, subject) for oid, _, subject in (line.partition(" ") for line in lines))
        last = command.out("--git-dir", view, "rev-parse", f"{tip or base}^{{tree}}", isolated=True)
        onto = str(info.get("onto") or "")
        yield Work(view, Path(info["project"]), branch, onto, base, tip, tree, commits, tree != last)
    finally:
        remove_tree(view)


def _snapshot(view: Path, checkout: Path, start: str, objects: _Objects, budget: _Budget) -> str:
    """The checkout's files as a tree of the view's: walked by descriptor (no link followed, nothing but
    regular files and links read, no `.git` at any depth), ignored files left out as git would (their
    rules copied out of the checkout first), each file hashed as read."""
    index = view / "snapshot.index"
    shadow = view / "ignore-rules"
    shadow.mkdir()
    found: list[tuple[str, str]] = []  # (relative path, "file" | "exec" | "link")
    for d in Walk(checkout):
        d.prune.add(".git")
        if d.rel:
            (shadow / d.rel).mkdir(parents=True, exist_ok=True)
        for e in d.entries:
            rel = d.path(e.name)
            if e.name == ".git":
                continue
            if e.is_symlink():
                found.append((rel, "link"))
            elif e.is_file(follow_symlinks=False):
                found.append((rel, "file"))
                if e.name == ".gitignore":
                    fd = _open_regular(d.fd, e.name)
                    if fd is not None:
                        try:
                            rules = os.read(fd, 1 << 20)
                        finally:
                            os.close(fd)
                        (shadow / rel).write_bytes(rules)
    command.git("--git-dir", view, "read-tree", start, isolated=True, index=index)  # tracked files are never ignored
    paths = b"".join(os.fsencode(rel) + b"\0" for rel, _ in found)
    ignored_out = command.git(
        "--git-dir", view, "--work-tree", shadow, "check-ignore", "--stdin", "-z",
        stdin=paths, isolated=True, index=index, check=False,
    ).stdout  # fmt: skip
    ignored = {os.fsdecode(p) for p in ignored_out.split(b"\0") if p}
    keep = {rel: kind for rel, kind in found if rel not in ignored}
    entries = []
    for d in Walk(checkout):
        d.prune.add(".git")
        for e in d.entries:
            rel = d.path(e.name)
            if rel not in keep:
                continue
            if keep[rel] == "link":
                try:
                    target = os.fsencode(os.readlink(e.name, dir_fd=d.fd))
                except OSError:
                    continue
                budget.take(len(target))
                entries.append(f"120000 {objects.blob([target], len(target))}".encode() + b"\t" + os.fsencode(rel))
                continue
            fd = _open_regular(d.fd, e.name)
            if fd is None:
                continue
            try:
                st = os.fstat(fd)
                oid = objects.blob(_chunks(fd, st.st_size, budget), st.st_size)
            finally:
                os.close(fd)
            mode = "100755" if st.st_mode & stat.S_IXUSR else "100644"
            entries.append(f"{mode} {oid}".encode() + b"\t" + os.fsencode(rel))
    index.unlink(missing_ok=True)
    command.git("--git-dir", view, "update-index", "-z", "--index-info", stdin=b"".join(e + b"\0" for e in entries),
         isolated=True, index=index)  # fmt: skip
    return command.git("--git-dir", view, "write-tree", isolated=True, index=index).stdout.decode().strip()
