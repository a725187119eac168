"""Worktree mode: a bottle works in a checkout of its own, on branch `claude-bottle/<slug>`, and the
operator's repository is never written by the agent (issue 15; docs/design/project-aware.md).

The checkout (`<state>/worktree`, mounted at /workspace) is a fresh repository made by the host from the
operator's `HEAD`. Its `objects/info/alternates` borrows the operator's object store, which the bottle
mounts read-only at the same path: nothing is copied, and the agent can add objects but change none of
the operator's refs, branches, hooks, config, index or files. Parallel bottles each have their own.

The host never runs git *in* the checkout once the agent has had it (its config, hooks and attributes
are the agent's). To read the bottle's work the host copies the checkout's own objects, as plain files
opened without following a link, into a view repository of its own (`<state>/worktree-view.git`,
borrowing the same store), reads the branch's commit id from the ref files as text, and runs git on the
view with no system or global configuration, so that no filter, textconv or hook an attribute names can
run. Merging into the operator's branch fetches from the view with object checks on (a tree entry named
`.git` is refused).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import subprocess
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_bottle.bottle.state import StateDir
from claude_bottle.errors import BottleError
from claude_bottle.hostfs.walk import Walk, remove_tree
from claude_bottle.identity import RuntimeIds

__all__ = ["BRANCH_PREFIX", "Project", "Work", "apply", "create", "merge", "pending", "project", "reading"]

BRANCH_PREFIX = "claude-bottle/"
CHECKOUT = "worktree"
MAX_COPY = 8 << 30  # bytes one verb reads out of the checkout (objects and files), at most
CHUNK = 1 << 20
GIT_TIMEOUT = 300
_OID = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# On every git the host runs here: no fsmonitor daemon, no hooks, whatever a config says.
_HARDEN = ("-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null")
_REPO_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES")


class WorktreeError(BottleError):
    """Worktree mode cannot do what was asked; the text says why and what to do."""


def _git(
    *args: str | Path,
    isolated: bool = False,
    stdin: bytes | None = None,
    check: bool = True,
    index: Path | None = None,
    owner: tuple[int, int, str] | None = None,
    harden: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    env.update(GIT_TERMINAL_PROMPT="0", GIT_PAGER="cat", PAGER="cat", LC_ALL="C")
    for var in _REPO_VARS:
        env.pop(var, None)
    if isolated:  # the view and the new checkout: no system or global configuration at all
        env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null", GIT_ATTR_NOSYSTEM="1")
    if index is not None:
        env["GIT_INDEX_FILE"] = str(index)
    as_owner: dict[str, Any] = {}
    if owner is not None:  # root on someone else's repository: git runs as them, with their configuration
        env["HOME"] = owner[2]
        as_owner = {"user": owner[0], "group": owner[1], "extra_groups": [], "cwd": "/"}
    try:
        result = subprocess.run(
            ["git", *(_HARDEN if harden else ()), *map(str, args)],
            input=stdin,
            capture_output=True,
            env=env,
            check=False,
            timeout=GIT_TIMEOUT,
            **as_owner,
        )
    except FileNotFoundError:
        raise WorktreeError("git is not installed: worktree mode needs it on the host (apt install git)") from None
    except subprocess.TimeoutExpired:
        raise WorktreeError(f"git {_verb(args)} took over {GIT_TIMEOUT} s: stopped") from None
    if check and result.returncode != 0:
        last = (result.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise WorktreeError(f"git {_verb(args)} failed: {last}")
    return result


def _verb(args: Sequence[str | Path]) -> str:
    """The git command in an argument list (past -C DIR, --git-dir DIR, -c KEY=VALUE, ...)."""
    i = 0
    while i < len(args) and str(args[i]) in ("-C", "-c", "--git-dir", "--work-tree"):
        i += 2
    return str(args[i]) if i < len(args) else "?"


def _owner(path: Path) -> tuple[int, int, str] | None:
    """Under root, the owner of the operator's repository when it is not root: git in that repository runs
    as its owner (as git itself insists: it refuses a repository another user owns), so nothing its
    configuration names runs as root."""
    if os.getuid() != 0:
        return None
    st = path.stat()
    if st.st_uid == 0:
        return None
    try:
        import pwd

        home = pwd.getpwuid(st.st_uid).pw_dir
    except KeyError:
        home = "/nonexistent"
    return st.st_uid, st.st_gid, home


def _op(
    top: Path, *args: str | Path, stdin: bytes | None = None, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    """Git in the operator's repository (never the agent's checkout), as its owner."""
    return _git("-C", top, *args, stdin=stdin, check=check, owner=_owner(top))


def _out(*args: str | Path, isolated: bool = False) -> str:
    return _git(*args, isolated=isolated).stdout.decode().strip()


# -- the operator's repository ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Project:
    top: Path  # the repository's top level (the agent's workspace as written)
    objects: Path  # its object store, borrowed read-only
    head: str  # the commit the bottle starts from
    branch: str | None  # the operator's current branch (None: a detached HEAD)
    object_format: str


def project(workspace: Path) -> Project:
    """The operator's repository a worktree bottle starts from; one-line errors before any work."""
    ws = workspace.resolve()
    probe = _op(ws, "rev-parse", "--show-toplevel", "--git-common-dir", "--show-object-format", check=False)
    if probe.returncode != 0:
        said = probe.stderr.decode(errors="replace")
        if "dubious ownership" in said:
            raise WorktreeError(f"git refuses {ws}: it is owned by another user (run claude-bottle as its owner)")
        raise WorktreeError(
            f"workspace {ws} is not a git repository: worktree mode needs one (`git init` and commit, "
            'or workspace_mode = "mount")'
        )
    top, common, fmt = probe.stdout.decode().splitlines()[:3]
    if Path(top).resolve() != ws:
        raise WorktreeError(
            f"workspace {ws} is inside the repository {top}: worktree mode works on a whole repository, "
            "so make its top level the workspace"
        )
    head = _op(ws, "rev-parse", "--verify", "-q", "HEAD^{commit}", check=False)
    if head.returncode != 0:
        raise WorktreeError(f"{ws} has no commit yet: commit once, then start (the bottle starts from HEAD)")
    branch = _op(ws, "symbolic-ref", "-q", "--short", "HEAD", check=False).stdout.decode().strip()
    objects = (ws / common).resolve() / "objects"
    if not objects.is_dir():
        raise WorktreeError(f"{ws}: its object store {objects} is not a directory")
    return Project(ws, objects, head.stdout.decode().strip(), branch or None, fmt.strip() or "sha1")


# -- the bottle's checkout -----------------------------------------------------------------------------------
def checkout_path(state: StateDir) -> Path:
    return state.path / CHECKOUT


def create(state: StateDir, proj: Project, ids: RuntimeIds) -> dict[str, Any]:
    """The bottle's checkout on its own branch from the operator's HEAD; what the record keeps of it."""
    dest = checkout_path(state)
    branch = BRANCH_PREFIX + state.slug
    _git("init", "-q", "--template=", f"--object-format={proj.object_format}", dest, isolated=True)
    git_dir = dest / ".git"
    (git_dir / "objects" / "info" / "alternates").write_text(f"{proj.objects}\n", encoding="utf-8")
    for key, value in (
        ("user.name", f"Claude in bottle {state.slug}"),
        ("user.email", f"{state.slug}@claude-bottle.invalid"),
        ("gc.auto", "0"),  # a gc would rewrite what the view copies; the objects it would pack are few
    ):
        _git("-C", dest, "config", key, value, isolated=True)
    _git("-C", dest, "update-ref", f"refs/heads/{branch}", proj.head, isolated=True)
    _git("-C", dest, "symbolic-ref", "HEAD", f"refs/heads/{branch}", isolated=True)
    _git("-C", dest, "reset", "-q", "--hard", isolated=True)
    (git_dir / "hooks").mkdir(exist_ok=True)
    if os.getuid() == 0:
        for d in Walk(dest):
            for e in d.entries:
                os.chown(e.name, ids.agent_uid, ids.agent_gid, dir_fd=d.fd, follow_symlinks=False)
        os.chown(dest, ids.agent_uid, ids.agent_gid)
    return {
        "project": str(proj.top),
        "objects": str(proj.objects),
        "base": proj.head,
        "branch": branch,
        "onto": proj.branch or "",
        "object_format": proj.object_format,
    }


# -- reading the bottle's work (never running git in the checkout) -------------------------------------------
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
        if raw is not None and _OID.fullmatch(raw.decode(errors="replace").strip()):
            return raw.decode().strip()
    with contextlib.suppress(OSError), _opened(checkout, ".git") as fd:
        packed = _read_file(fd, "packed-refs", 64 << 20) or b""
        for line in packed.decode(errors="replace").splitlines():
            oid, _, ref = line.partition(" ")
            if ref == f"refs/heads/{branch}" and _OID.fullmatch(oid):
                return oid
    return None


class _Budget:
    """Bytes read out of the checkout by one verb, at most MAX_COPY (an agent can fill a disk: not ours)."""

    def __init__(self) -> None:
        self.left = MAX_COPY

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise WorktreeError(f"the bottle's work is over {MAX_COPY >> 30} GiB: not read")


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
            raise WorktreeError("a file changed while it was read: run the verb again (or stop the bottle)")
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
            raise WorktreeError(f"the bottle's object {name[:12]} does not hold what its name says: not read")
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
                            _git("--git-dir", view, "index-pack", "--stdin", "--strict", stdin=data, isolated=True)
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

    def git(
        self, *args: str | Path, check: bool = True, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return _git("--git-dir", self.view, *args, isolated=True, check=check, stdin=stdin)


def info_of(state: StateDir) -> dict[str, Any]:
    info = state.read().worktree
    if not info:
        raise WorktreeError(f"{state.slug} is not a worktree bottle: its agent edits {state.read().workspace} directly")
    return info


@contextlib.contextmanager
def reading(state: StateDir) -> Iterator[Work]:
    """The bottle's commits and files, read into a view of the host's own (made for this verb and removed
    after it), without git ever walking or reading the agent's checkout itself."""
    info = info_of(state)
    checkout = checkout_path(state)
    if not checkout.is_dir() or checkout.is_symlink():
        raise WorktreeError(f"{state.slug}: its checkout {checkout} is gone")
    view = Path(tempfile.mkdtemp(prefix="worktree-view-", dir=state.path))
    try:
        fmt = str(info.get("object_format") or "sha1")
        _git("init", "-q", "--bare", "--template=", f"--object-format={fmt}", view, isolated=True)
        (view / "objects" / "info" / "alternates").write_text(f"{info['objects']}\n", encoding="utf-8")
        budget, objects = _Budget(), _Objects(view, fmt)
        _copy_objects(checkout, view, objects, budget)
        base, branch = str(info["base"]), str(info["branch"])
        tip = _branch_tip(checkout, branch)
        if tip is not None:
            known = _git("--git-dir", view, "cat-file", "-e", f"{tip}^{{commit}}", isolated=True, check=False)
            tip = tip if known.returncode == 0 else None  # naming no commit the view can read: none
        tree = _snapshot(view, checkout, tip or base, objects, budget)
        log = _git("--git-dir", view, "log", "--format=%H %s", f"{base}..{tip}", isolated=True).stdout if tip else b""
        lines = log.decode(errors="replace").splitlines()
        commits = tuple((oid, subject) for oid, _, subject in (line.partition(" ") for line in lines))
        last = _out("--git-dir", view, "rev-parse", f"{tip or base}^{{tree}}", isolated=True)
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
    _git("--git-dir", view, "read-tree", start, isolated=True, index=index)  # tracked files are never ignored
    paths = b"".join(os.fsencode(rel) + b"\0" for rel, _ in found)
    ignored_out = _git(
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
    _git("--git-dir", view, "update-index", "-z", "--index-info", stdin=b"".join(e + b"\0" for e in entries),
         isolated=True, index=index)  # fmt: skip
    return _git("--git-dir", view, "write-tree", isolated=True, index=index).stdout.decode().strip()


# -- the verbs ----------------------------------------------------------------------------------------------
def diff(state: StateDir, *, stat_only: bool = False) -> str:
    with reading(state) as w:
        how = "--stat" if stat_only else "--patch-with-stat"
        return w.git("diff", "--no-ext-diff", "--no-textconv", how, w.base, w.tree).stdout.decode(errors="replace")


def log(state: StateDir) -> str:
    with reading(state) as w:
        if w.tip is None:
            return ""
        return w.git("log", "--no-decorate", "--stat", f"{w.base}..{w.tip}").stdout.decode(errors="replace")


def _not_running(state: StateDir, verb: str) -> None:
    """What is merged or applied must be what the operator reviewed: not a tree the agent still changes."""
    record = state.read()
    if record.status == "running" or (record.status == "creating" and not state.abandoned(record)):
        raise WorktreeError(
            f"{state.slug} is running: its work can change between your review and the {verb}; "
            f"`claude-bottle stop {state.slug}` first (diff and log work while it runs)"
        )


def _clean(top: Path) -> None:
    if not top.is_dir():
        raise WorktreeError(f"{top} no longer exists: nothing to merge into")
    if _op(top, "rev-parse", "-q", "--verify", "MERGE_HEAD", check=False).returncode == 0:
        raise WorktreeError(f"{top} is in the middle of a merge: finish or abort it first (nothing was changed)")
    dirty = _op(top, "status", "--porcelain", "--untracked-files=no").stdout.decode(errors="replace")
    if dirty.strip():
        raise WorktreeError(
            f"{top} has uncommitted changes ({len(dirty.splitlines())} files): commit or stash them, then merge "
            "again (nothing was changed)"
        )


def merge(state: StateDir, *, squash: bool) -> str:
    """The bottle's commits into the operator's current branch. Refuses on a dirty tree."""
    _not_running(state, "merge")
    with reading(state) as w:
        _clean(w.project)
        return _merge(state, w, squash=squash)


def hook_folders(top: Path) -> list[str]:
    """Folders under `top` (relative to it) that the operator's git runs hooks from: its effective
    `core.hooksPath` when that lies inside (husky's `.husky/_` dispatches to `.husky/`, so its parent too).
    Read as the owner, with their own configuration (it is theirs that decides)."""
    # (`git config --get` runs nothing; unhardened, so that it reports the value git would use, not ours)
    got = _git("-C", top, "config", "--get", "core.hooksPath", check=False, owner=_owner(top), harden=False)
    raw = got.stdout.decode(errors="replace").strip()
    if got.returncode != 0 or not raw:
        return []
    where = Path(raw).expanduser()
    if not where.is_absolute():
        inner = _git("-C", top, "rev-parse", "--show-toplevel", check=False, owner=_owner(top))
        base = Path(inner.stdout.decode().strip()) if inner.returncode == 0 else top
        where = base / where
    where = Path(os.path.normpath(where))
    try:
        rel = where.relative_to(top.resolve())
    except ValueError:
        return []
    out = [rel.as_posix()]
    if rel.name == "_" and rel.parent != Path():
        out.append(rel.parent.as_posix())
    return ["" if x == "." else x for x in out]


def _repositories(w: Work, rev: str, verb: str) -> None:
    """Refuse work whose files would make a folder of the operator's tree a repository to git (a HEAD git
    accepts, or a .git by any spelling: gitshape.inert): git there would run the agent's config."""
    from claude_bottle.git.shape import HEAD_PEEK, inert, is_head

    listing = w.git("ls-tree", "-r", "-z", "--full-tree", rev).stdout
    for item in listing.split(b"\0"):
        if not item:
            continue
        meta, _, raw_path = item.partition(b"\t")
        path = os.fsdecode(raw_path)
        mode, _kind, oid = meta.decode().split()
        name = path.rsplit("/", 1)[-1]
        data = w.git("cat-file", "blob", oid).stdout[:HEAD_PEEK] if is_head(name) else None
        kind = "l" if mode == "120000" else "f"
        target = os.fsdecode(data) if kind == "l" and data is not None else ""
        why = inert(path, kind, target=target, data=data)
        if why is not None:
            raise WorktreeError(
                f"the bottle's work holds {path} ({why}); nothing was {verb}: remove it in the bottle and commit, "
                "or bring the work home by hand"
            )
    # What it changes must not land in a repository of the operator's tree (a bare mirror in an ignored
    # folder, a `.bare` git dir) nor where the operator's git runs hooks from.
    from claude_bottle.git.shape import repository_on_the_way

    changed = w.git("diff", "--name-only", "-z", "--no-renames", w.base, rev).stdout
    hooks = hook_folders(w.project)
    for raw in changed.split(b"\0"):
        if not raw:
            continue
        path = os.fsdecode(raw)
        inside = repository_on_the_way(w.project, path)
        if inside is not None:
            raise WorktreeError(
                f"the bottle's work changes {path}, inside {inside}, a repository of {w.project} (git there would "
                f"read it); nothing was {verb}: bring that change home by hand"
            )
        if any(h in ("", path) or path.startswith(h + "/") for h in hooks):
            raise WorktreeError(
                f"the bottle's work changes {path}, in the folder your git runs hooks from (core.hooksPath); nothing "
                f"was {verb}: review it and bring it home by hand"
            )


def _merge(state: StateDir, w: Work, *, squash: bool) -> str:
    if w.tip is None or not w.commits:
        more = f" (its uncommitted changes: `claude-bottle apply {state.slug}`)" if w.uncommitted else ""
        raise WorktreeError(f"{state.slug} made no commits: nothing to merge{more}")
    _repositories(w, w.tip, "merged")
    # The bottle's new objects, packed from the view, indexed into the operator's repository with every
    # object checked (its owner's git reads nothing of the state dir).
    pack = w.git("pack-objects", "--revs", "--stdout", "-q", stdin=f"{w.tip}\n^{w.base}\n".encode()).stdout
    fetch = _op(w.project, "index-pack", "--stdin", "--strict", stdin=pack, check=False)
    if fetch.returncode != 0:
        said = fetch.stderr.decode(errors="replace").strip().splitlines() or ["?"]
        why = next((ln for ln in said if ln.startswith("error:")), said[-1])
        raise WorktreeError(f"the bottle's commits could not be fetched into {w.project}: {why}")
    n = len(w.commits)
    subject = f"claude-bottle: {w.branch} ({n} commit{'s' if n != 1 else ''})"
    body = "\n".join(f"- {s}" for _, s in reversed(w.commits))
    if squash:
        steps = [("merge", "--squash", "--no-commit", w.tip), ("commit", "-q", "-m", subject, "-m", body)]
    else:
        steps = [("merge", "--no-ff", "--no-edit", "-m", subject, "-m", body, w.tip)]
    for step in steps:
        result = _op(w.project, *step, check=False)
        if result.returncode != 0:
            msg = (result.stdout + result.stderr).decode(errors="replace")
            if "CONFLICT" in msg:
                raise WorktreeError(
                    f"the merge of {w.branch} stopped on conflicts in {w.project}: resolve them and commit, or "
                    "`git merge --abort`" + (" (`git reset --merge` after --squash)" if squash else "")
                )
            raise WorktreeError(f"git {step[0]} in {w.project} failed: {(msg.strip().splitlines() or ['?'])[-1]}")
    extra = f"; its uncommitted changes were not merged (`claude-bottle apply {state.slug}`)" if w.uncommitted else ""
    how = "squashed into one commit" if squash else "merged"
    return f"{n} commit{'s' if n != 1 else ''} of {w.branch} {how} on {w.onto or 'HEAD'} in {w.project}{extra}"


def apply(state: StateDir) -> str:
    """The bottle's changes (committed and not) as uncommitted changes in the operator's working tree."""
    _not_running(state, "apply")
    with reading(state) as w:
        return _apply(state, w)


def _apply(state: StateDir, w: Work) -> str:
    patch = w.git("diff", "--binary", "--full-index", "--no-ext-diff", "--no-textconv", w.base, w.tree).stdout
    if not patch.strip():
        raise WorktreeError(f"{state.slug} changed nothing: nothing to apply")
    _repositories(w, w.tree, "applied")
    result = _op(w.project, "apply", "--whitespace=nowarn", "-", stdin=patch, check=False)
    if result.returncode != 0:
        why = (result.stderr.decode(errors="replace").strip().splitlines() or ["?"])[0]
        raise WorktreeError(
            f"the bottle's changes do not apply to {w.project} as it is ({why}); nothing was changed: "
            f"`claude-bottle merge {state.slug}` merges its commits instead"
        )
    files = w.git("diff", "--name-only", w.base, w.tree).stdout.decode(errors="replace").splitlines()
    return f"{len(files)} file{'s' if len(files) != 1 else ''} changed in {w.project} (not committed)"


def pending(state: StateDir) -> str | None:
    """What removing this bottle's state would lose of its work, for `cleanup` and `stop --rm`."""
    record = state.read()
    if not record.worktree:
        return None
    try:
        with reading(state) as w:
            keep: Sequence[str] = ()
            if w.project.is_dir():
                refs = _op(w.project, "for-each-ref", "--format=%(objectname)", "refs/heads", check=False)
                keep = [r for r in refs.stdout.decode().split() if _OID.fullmatch(r)]
            unmerged = 0
            if w.tip is not None:
                count = w.git("rev-list", "--count", w.tip, "--not", w.base, *keep, check=False)
                unmerged = int(count.stdout.decode().strip() or 0) if count.returncode == 0 else len(w.commits)
    except (WorktreeError, OSError, ValueError) as exc:
        return f"its worktree could not be read ({exc})"
    parts = [f"{unmerged} unmerged commit{'s' if unmerged != 1 else ''}"] if unmerged else []
    if w.uncommitted:
        parts.append("uncommitted changes")
    return f"{w.branch}: {', '.join(parts)}" if parts else None
