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
import os
import re
import stat
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BottleError
from .runtime import RuntimeIds
from .state import StateDir
from .walk import Walk

__all__ = ["BRANCH_PREFIX", "Project", "Work", "apply", "create", "merge", "pending", "project", "read"]

BRANCH_PREFIX = "claude-bottle/"
CHECKOUT = "worktree"
VIEW = "worktree-view.git"
MAX_COPY = 8 << 30  # the agent's own objects copied to the view, at most
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
            ["git", *_HARDEN, *map(str, args)],
            input=stdin,
            capture_output=True,
            env=env,
            check=False,
            timeout=600,
            **as_owner,
        )
    except FileNotFoundError:
        raise WorktreeError("git is not installed: worktree mode needs it on the host (apt install git)") from None
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


def _copy_objects(checkout: Path, view: Path) -> None:
    """The checkout's own objects (loose and packs; never `info/`) into the view, as plain files."""
    copied = 0
    with _opened(checkout, ".git", "objects") as objects:
        for sub in os.listdir(objects):  # noqa: PTH208 - by descriptor: no link on the way is followed
            if not (re.fullmatch(r"[0-9a-f]{2}", sub) or sub == "pack"):
                continue
            try:
                src_dir = os.open(sub, _DIR, dir_fd=objects)
            except OSError:
                continue
            try:
                target = view / "objects" / sub
                target.mkdir(exist_ok=True)
                for name in os.listdir(src_dir):  # noqa: PTH208 - by descriptor
                    if not re.fullmatch(r"[0-9a-f]{38,62}|pack-[0-9a-f]{40,64}\.(?:pack|idx|rev)", name):
                        continue
                    if (target / name).exists():
                        continue  # named by its content: already copied
                    data = _read_file(src_dir, name, MAX_COPY - copied + 1)
                    if data is None:
                        continue
                    copied += len(data)
                    if copied > MAX_COPY:
                        raise WorktreeError(f"the bottle's git objects are over {MAX_COPY >> 30} GiB: not read")
                    tmp = target / f".{name}.tmp"
                    tmp.write_bytes(data)
                    tmp.replace(target / name)
            finally:
                os.close(src_dir)


def _view(state: StateDir, info: dict[str, Any]) -> Path:
    view = state.path / VIEW
    if not (view / "objects").is_dir():
        fmt = str(info.get("object_format") or "sha1")
        _git("init", "-q", "--bare", "--template=", f"--object-format={fmt}", view, isolated=True)
    (view / "objects" / "info").mkdir(parents=True, exist_ok=True)
    (view / "objects" / "info" / "alternates").write_text(f"{info['objects']}\n", encoding="utf-8")
    _copy_objects(checkout_path(state), view)
    return view


@dataclass(frozen=True)
class Work:
    """A worktree bottle's work as the host sees it now."""

    view: Path
    project: Path
    branch: str
    onto: str
    base: str
    tip: str | None  # the branch's commit (None: the agent deleted its branch)
    tree: str  # the checkout's files as a tree, committed or not
    commits: tuple[tuple[str, str], ...]  # (id, subject) from base to tip, newest first

    @property
    def uncommitted(self) -> bool:
        start = _out("--git-dir", self.view, "rev-parse", f"{self.tip or self.base}^{{tree}}", isolated=True)
        return self.tree != start

    def git(
        self, *args: str | Path, check: bool = True, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return _git("--git-dir", self.view, *args, isolated=True, check=check, stdin=stdin)


def info_of(state: StateDir) -> dict[str, Any]:
    info = state.read().worktree
    if not info:
        raise WorktreeError(f"{state.slug} is not a worktree bottle: its agent edits {state.read().workspace} directly")
    return info


def read(state: StateDir) -> Work:
    """The bottle's commits and files, read through the view (works on running, stopped, preserved)."""
    info = info_of(state)
    checkout = checkout_path(state)
    if not checkout.is_dir() or checkout.is_symlink():
        raise WorktreeError(f"{state.slug}: its checkout {checkout} is gone")
    view = _view(state, info)
    base, branch = str(info["base"]), str(info["branch"])
    tip = _branch_tip(checkout, branch)
    known = _git("--git-dir", view, "cat-file", "-e", f"{tip}^{{commit}}", isolated=True, check=False) if tip else None
    if known is not None and known.returncode != 0:
        tip = None  # a ref naming no commit the view can read: as good as none
    # The files: the checkout's working tree hashed into a scratch index of the view's.
    env_index = state.path / "worktree-view.index"
    env_index.unlink(missing_ok=True)
    tree = _snapshot(view, checkout, tip or base, env_index)
    log = _git("--git-dir", view, "log", "--format=%H %s", f"{base}..{tip}", isolated=True).stdout if tip else b""
    lines = log.decode(errors="replace").splitlines()
    commits = tuple((oid, subject) for oid, _, subject in (line.partition(" ") for line in lines))
    return Work(view, Path(info["project"]), branch, str(info.get("onto") or ""), base, tip, tree, commits)


def _snapshot(view: Path, checkout: Path, start: str, index: Path) -> str:
    """The checkout's files as a tree of the view's (a scratch index: the checkout's own is the agent's)."""
    common = ("--git-dir", view, "--work-tree", checkout)
    try:
        _git(*common, "read-tree", start, isolated=True, index=index)
        _git(*common, "add", "-A", "--ignore-errors", ".", isolated=True, check=False, index=index)
        return _git(*common, "write-tree", isolated=True, index=index).stdout.decode().strip()
    finally:
        index.unlink(missing_ok=True)


# -- the verbs ----------------------------------------------------------------------------------------------
def diff(state: StateDir, *, stat_only: bool = False) -> str:
    w = read(state)
    args = ["diff", "--no-ext-diff", "--no-textconv", "--stat" if stat_only else "--patch-with-stat", w.base, w.tree]
    return w.git(*args).stdout.decode(errors="replace")


def log(state: StateDir) -> str:
    w = read(state)
    if w.tip is None:
        return ""
    return w.git("log", "--no-decorate", "--stat", f"{w.base}..{w.tip}").stdout.decode(errors="replace")


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
    w = read(state)
    _clean(w.project)
    if w.tip is None or not w.commits:
        more = f" (its uncommitted changes: `claude-bottle apply {state.slug}`)" if w.uncommitted else ""
        raise WorktreeError(f"{state.slug} made no commits: nothing to merge{more}")
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
    w = read(state)
    patch = w.git("diff", "--binary", "--full-index", "--no-ext-diff", "--no-textconv", w.base, w.tree).stdout
    if not patch.strip():
        raise WorktreeError(f"{state.slug} changed nothing: nothing to apply")
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
        w = read(state)
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
