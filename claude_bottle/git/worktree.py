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

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_bottle.bottle.state import StateDir
from claude_bottle.git import command, view
from claude_bottle.git.command import BRANCH_PREFIX, WorktreeError, checkout_path
from claude_bottle.git.view import Work, reading
from claude_bottle.hostfs.walk import Walk
from claude_bottle.identity import RuntimeIds

__all__ = [
    "BRANCH_PREFIX",
    "Project",
    "Work",
    "WorktreeError",
    "apply",
    "checkout_path",
    "create",
    "merge",
    "pending",
    "project",
    "reading",
]


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
    probe = command.op(ws, "rev-parse", "--show-toplevel", "--git-common-dir", "--show-object-format", check=False)
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
    head = command.op(ws, "rev-parse", "--verify", "-q", "HEAD^{commit}", check=False)
    if head.returncode != 0:
        raise WorktreeError(f"{ws} has no commit yet: commit once, then start (the bottle starts from HEAD)")
    branch = command.op(ws, "symbolic-ref", "-q", "--short", "HEAD", check=False).stdout.decode().strip()
    objects = (ws / common).resolve() / "objects"
    if not objects.is_dir():
        raise WorktreeError(f"{ws}: its object store {objects} is not a directory")
    return Project(ws, objects, head.stdout.decode().strip(), branch or None, fmt.strip() or "sha1")


# -- the bottle's checkout -----------------------------------------------------------------------------------


def create(state: StateDir, proj: Project, ids: RuntimeIds) -> dict[str, Any]:
    """The bottle's checkout on its own branch from the operator's HEAD; what the record keeps of it."""
    dest = command.checkout_path(state)
    branch = BRANCH_PREFIX + state.slug
    command.git("init", "-q", "--template=", f"--object-format={proj.object_format}", dest, isolated=True)
    git_dir = dest / ".git"
    (git_dir / "objects" / "info" / "alternates").write_text(f"{proj.objects}\n", encoding="utf-8")
    for key, value in (
        ("user.name", f"Claude in bottle {state.slug}"),
        ("user.email", f"{state.slug}@claude-bottle.invalid"),
        ("gc.auto", "0"),  # a gc would rewrite what the view copies; the objects it would pack are few
    ):
        command.git("-C", dest, "config", key, value, isolated=True)
    command.git("-C", dest, "update-ref", f"refs/heads/{branch}", proj.head, isolated=True)
    command.git("-C", dest, "symbolic-ref", "HEAD", f"refs/heads/{branch}", isolated=True)
    command.git("-C", dest, "reset", "-q", "--hard", isolated=True)
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
    if command.op(top, "rev-parse", "-q", "--verify", "MERGE_HEAD", check=False).returncode == 0:
        raise WorktreeError(f"{top} is in the middle of a merge: finish or abort it first (nothing was changed)")
    dirty = command.op(top, "status", "--porcelain", "--untracked-files=no").stdout.decode(errors="replace")
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
    got = command.git(
        "-C", top, "config", "--get", "core.hooksPath", check=False, owner=command.owner(top), harden=False
    )
    raw = got.stdout.decode(errors="replace").strip()
    if got.returncode != 0 or not raw:
        return []
    where = Path(raw).expanduser()
    if not where.is_absolute():
        inner = command.git("-C", top, "rev-parse", "--show-toplevel", check=False, owner=command.owner(top))
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
    fetch = command.op(w.project, "index-pack", "--stdin", "--strict", stdin=pack, check=False)
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
        result = command.op(w.project, *step, check=False)
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
    result = command.op(w.project, "apply", "--whitespace=nowarn", "-", stdin=patch, check=False)
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
                refs = command.op(w.project, "for-each-ref", "--format=%(objectname)", "refs/heads", check=False)
                keep = [r for r in refs.stdout.decode().split() if view.OID.fullmatch(r)]
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
