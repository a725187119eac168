"""Git on the host, safe from what an agent wrote in a mounted workspace.

In mount mode the agent edits the operator's working tree, `.git` included (so it can commit). Git run on
the host reads configuration and runs hooks from `.git` (and from any `.git` or bare-looking repository
in any folder under the workspace, or wherever a `.git` file or `commondir` points): an agent that writes
`core.fsmonitor`, a hook or a `commondir` there runs code as the operator the next time they use git.

What the bottle does about it, in layers:
1. While it runs, the workspace repository's own control paths (`config`, `config.worktree`, `hooks/`,
   `info/`, `modules/`, `worktrees/`, or the `.git` file of a worktree) are mounted read-only over
   themselves, and `.git` itself is a mount point (`protected`).
2. When a run ends (every stop, crash, resume, cleanup), the whole workspace is walked for what git would
   read as configuration or code and that changed since the run began (`ctime`, which no unprivileged
   process can set back): `config`/`config.worktree` files are kept only if every key in them is on an
   allow-list of keys that run nothing and point nowhere; new or changed hooks, `commondir` files, and
   `.git` files pointing outside the workspace are never kept. What is not kept is moved into the state
   dir's `git-quarantine/` (nothing is deleted) and the operator is told, file by file.
Between the start of a run and its end the operator should not run git inside the workspace (a
nested repository or a `commondir` written by the agent would be read); the worktree mode of a later
issue gives the agent a checkout of its own and avoids this entirely.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from claude_bottle import process
from claude_bottle.bottle.state import StateDir
from claude_bottle.errors import BottleError
from claude_bottle.git.shape import valid_head
from claude_bottle.hostfs.walk import Walk

__all__ = ["Finding", "config_is_safe", "protected", "settle", "settle_bottle", "settle_copy"]

# Paths under the workspace's own .git mounted read-only while a bottle runs (those that exist).
PROTECTED = ("config", "config.worktree", "hooks", "info", "modules", "worktrees")
CTIME_SLACK = 2.0  # seconds: clocks and filesystem timestamp granularity

# Keys that run nothing, load nothing and point git at nothing outside the repository (lower case; `*`
# stands for a subsection). Anything else in a config an agent wrote (core.fsmonitor, core.hooksPath,
# core.pager, core.editor, core.sshCommand, core.worktree, alias.*, filter.*, diff.*.textconv,
# credential.*, include.*, includeIf.*, gpg.*, uploadpack.*, ...) gets the file quarantined.
SAFE_KEYS = (
    "core.repositoryformatversion",
    "core.filemode",
    "core.bare",
    "core.logallrefupdates",
    "core.ignorecase",
    "core.precomposeunicode",
    "core.symlinks",
    "core.autocrlf",
    "core.eol",
    "core.safecrlf",
    "core.quotepath",
    "core.checkstat",
    "core.trustctime",
    "core.compression",
    "core.loosecompression",
    "user.name",
    "user.email",
    "init.defaultbranch",
    "branch.*.remote",
    "branch.*.merge",
    "branch.*.rebase",
    "branch.*.pushremote",
    "remote.*.url",
    "remote.*.pushurl",
    "remote.*.fetch",
    "remote.*.push",
    "remote.*.tagopt",
    "remote.*.prune",
    "remote.*.mirror",
    "extensions.objectformat",
    "extensions.worktreeconfig",
    "pull.rebase",
    "pull.ff",
    "push.default",
    "fetch.prune",
    "merge.ff",
    "merge.conflictstyle",
    "color.ui",
    "diff.renames",
    "diff.algorithm",
    "status.showuntrackedfiles",
    "gc.auto",
    "gc.autodetach",
    "submodule.*.url",
    "submodule.*.active",
    "advice.*",
)
MAX_CONFIG = 256 * 1024

_GIT_TIMEOUT = 30


def config_keys(data: bytes | str) -> list[str] | None:
    """The keys a git config file sets (section[.subsection].name, as git itself spells them), read by git
    (`git config --file - --list --null`, no system, global or included configuration), or None when git
    cannot read it (then it is not safe: nothing else may judge a file git reads)."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/nonexistent",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "LC_ALL": "C",
    }
    try:
        got = process.capture(
            ["git", "config", "--file", "-", "--no-includes", "--list", "--null"],
            input=raw,
            only_env=env,
            cwd="/",
            timeout=_GIT_TIMEOUT,
        )
    except BottleError:
        return None  # no git to ask (or it hung): nothing is judged safe
    if not got.ok:
        return None
    keys = []
    for entry in got.stdout.split(b"\0"):
        if entry:
            keys.append(entry.split(b"\n", 1)[0].decode("utf-8", "replace"))
    return keys


def _key_is_safe(key: str) -> bool:
    section, _, name = key.partition(".")
    if "." in name:  # subsection: section.sub.name -> section.*.name
        sub_name = name.rsplit(".", 1)[1]
        generic = f"{section}.*.{sub_name}"
    else:
        generic = key
    return any(fnmatch.fnmatchcase(generic, pat) or fnmatch.fnmatchcase(key, pat) for pat in SAFE_KEYS)


def config_is_safe(text: str) -> bool:
    keys = config_keys(text)
    return keys is not None and all(_key_is_safe(k) for k in keys)


@dataclass(frozen=True)
class Finding:
    path: Path  # where it was, in the workspace
    why: str
    moved_to: Path | None = None  # in the quarantine; None when it could not be moved

    def line(self) -> str:
        where = f"moved to {self.moved_to}" if self.moved_to else "COULD NOT BE MOVED: do not run git there"
        return f"git: {self.path}: {self.why}; {where}"


def protected(workspace: Path) -> list[str]:
    """The workspace repository's control paths to mount read-only (relative to the workspace). An absent
    `hooks/` is created empty so it can be protected too (git creates it in every repository anyway)."""
    git = workspace / ".git"
    if git.is_symlink():
        return []
    if git.is_file():
        return [".git"]  # a worktree's or submodule's pointer: the agent must not re-point it
    if not git.is_dir():
        return []
    hooks = git / "hooks"
    if not hooks.exists() and not hooks.is_symlink():
        with contextlib.suppress(OSError):
            hooks.mkdir(mode=0o755)
    return [f".git/{n}" for n in PROTECTED if (git / n).exists() and not (git / n).is_symlink()]


def _read(dir_fd: int, name: str, limit: int = MAX_CONFIG) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read(limit + 1)


def _judge_config(dir_fd: int, name: str) -> str | None:
    data = _read(dir_fd, name)
    if data is None:
        return "not a plain file"
    if len(data) > MAX_CONFIG:
        return "too large to check"
    keys = config_keys(data)
    if keys is None:
        return "not readable by git itself"
    unsafe = [k for k in keys if not _key_is_safe(k)]
    return f"sets {', '.join(sorted(set(unsafe))[:5])}" if unsafe else None


def _gitfile_target(dir_fd: int, name: str, here: Path, workspace: Path) -> str | None:
    data = _read(dir_fd, name, 4096)
    if data is None:
        return "not a plain file"
    text = data.decode("utf-8", "replace").strip()
    if not text.startswith("gitdir:"):
        return "not a git file"
    target = Path(text[len("gitdir:") :].strip())
    resolved = (here / target).resolve() if not target.is_absolute() else target.resolve()
    if resolved != workspace and workspace not in resolved.parents:
        return f"points git outside the workspace ({resolved})"
    return None


def _is_gitdir(name: str, entries: dict[str, os.DirEntry[str]], dir_fd: int) -> bool:
    """A folder git would read as a repository: a `.git`, or any folder with a HEAD git accepts."""
    return name == ".git" or ("HEAD" in entries and valid_head(dir_fd))


def _changed(entry: os.DirEntry[str], since: float) -> bool:
    try:
        return entry.stat(follow_symlinks=False).st_ctime >= since - CTIME_SLACK
    except OSError:
        return True


def settle(workspace: Path, since: float, quarantine: Path, *, skip: Iterable[str] = ()) -> tuple[list[Finding], bool]:
    """After a run: find what git would read as configuration or code, written since `since` (an epoch
    time), and move what is not safe into `quarantine`. `skip`: workspace-relative paths that were
    mounted read-only during the run (only the host could have changed them). Returns the findings and
    whether the whole workspace could be walked."""
    skipped = set(skip)
    findings: list[Finding] = []
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    walk = Walk(workspace)
    ws = workspace.resolve()

    def move(d_fd: int, name: str, rel: str, why: str) -> None:
        dest = quarantine / stamp / rel
        try:
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                os.rename(name, dest, src_dir_fd=d_fd)
            except OSError:  # another filesystem: copy what it is (file or link), then remove it
                st = os.stat(name, dir_fd=d_fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    dest.symlink_to(os.readlink(name, dir_fd=d_fd))
                else:
                    data = _read(d_fd, name, 16 * 1024 * 1024) or b""
                    dest.write_bytes(data)
                    dest.chmod(0o600)
                os.unlink(name, dir_fd=d_fd)
        except OSError:
            findings.append(Finding(workspace / rel, why))
            return
        findings.append(Finding(workspace / rel, why, dest))

    for d in walk:
        entries = {e.name: e for e in d.entries}
        base_name = d.rel.rsplit("/", 1)[-1] if d.rel else ws.name
        here = workspace / d.rel if d.rel else workspace
        if _is_gitdir(base_name, entries, d.fd):
            # Inside a git dir only its nested git dirs (submodules, worktrees) are walked further, unless
            # they were read-only all along. (The workspace itself may look like a bare repository: it is
            # judged as one, and still walked.)
            if d.rel:
                d.prune.update(n for n in entries if n not in ("modules", "worktrees") or d.path(n) in skipped)
            for name in ("config", "config.worktree"):
                e = entries.get(name)
                rel = d.path(name)
                if e is not None and rel not in skipped and _changed(e, since):
                    why = _judge_config(d.fd, name)
                    if why is not None:
                        move(d.fd, name, rel, f"a git config written by the agent {why}")
            e = entries.get("commondir")
            if e is not None and d.path("commondir") not in skipped and _changed(e, since):
                move(d.fd, "commondir", d.path("commondir"), "a commondir written by the agent points git elsewhere")
            hooks = entries.get("hooks")
            if hooks is not None and d.path("hooks") not in skipped:
                if hooks.is_symlink() or not hooks.is_dir(follow_symlinks=False):
                    if _changed(hooks, since):
                        move(d.fd, "hooks", d.path("hooks"), "git hooks replaced by a link or file")
                else:
                    _settle_hooks(d.fd, d.path("hooks"), since, move)
            continue
        e = entries.get(".git")
        if (
            e is not None
            and not e.is_dir(follow_symlinks=False)
            and d.path(".git") not in skipped
            and _changed(e, since)
        ):
            why = (
                "a link where git looks for a repository" if e.is_symlink() else _gitfile_target(d.fd, ".git", here, ws)
            )
            if why is not None:
                move(d.fd, ".git", d.path(".git"), f"a .git file written by the agent: {why}")
    complete = not walk.truncated and not walk.unreadable
    return findings, complete


def _settle_hooks(parent_fd: int, rel: str, since: float, move: Callable[[int, str, str, str], None]) -> None:
    try:
        fd = os.open("hooks", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    except OSError:
        return
    try:
        with os.scandir(fd) as it:
            for e in it:
                if e.name.endswith(".sample") and e.is_file(follow_symlinks=False):
                    continue  # git never runs these
                if _changed(e, since):
                    move(fd, e.name, f"{rel}/{e.name}", "a git hook written by the agent")
    finally:
        os.close(fd)


def settle_bottle(state: StateDir, notify: Callable[[str], None]) -> None:
    """After a run (its containers gone): what git on the host would read as configuration or code, written
    in the workspace during the run, is checked and what is not safe is quarantined (gitguard.py)."""
    record = state.read()
    # What the agent wrote: the workspace, or in worktree mode its own checkout (the operator may cd there);
    # for a bottle on a remote engine, the copy of its workspace that came home (the operator's is untouched).
    home_copy = state.home_workspace
    workspace: str | None
    if (record.manifest.get("agent") or {}).get("workspace_mode") == "copy":
        # The agent wrote only its copy (the bottle user's: git refuses it; one that came home was settled on
        # its way). The operator's workspace is theirs alone: nothing in it is judged, or moved.
        state.update(run_started=None)
        return
    if record.worktree:
        workspace = str(state.path / "worktree")
    elif home_copy.is_dir() and not home_copy.is_symlink():
        workspace = str(home_copy)
    else:
        workspace = record.workspace
    if record.run_started is None or not workspace or not Path(workspace).is_dir() or Path(workspace).is_symlink():
        return
    quarantine = state.path / "git-quarantine"
    findings, complete = settle(Path(workspace), record.run_started, quarantine, skip=record.git_protected)
    _told(state, findings, complete, Path(workspace), notify)
    state.update(run_started=None)


def settle_copy(state: StateDir, copy: Path, notify: Callable[[str], None]) -> None:
    """A copy of the agent's files that came home (all of it the agent's, so all of it judged), settled
    before it is put where verbs and the operator read it."""
    if not copy.is_dir() or copy.is_symlink():
        return
    findings, complete = settle(copy, 0.0, state.path / "git-quarantine")
    _told(state, findings, complete, copy, notify)


def _told(
    state: StateDir, findings: list[Finding], complete: bool, workspace: Path, notify: Callable[[str], None]
) -> None:
    quarantine = state.path / "git-quarantine"
    for f in findings:
        notify(f.line())
    if findings:
        log = "\n".join(f.line() for f in findings) + "\n"
        with contextlib.suppress(OSError), (quarantine / "findings.txt").open("a", encoding="utf-8") as out:
            out.write(log)
        if not state.preserved():
            # What was moved aside is the operator's to review: neither `stop --rm` nor cleanup removes it.
            state.preserve("git-quarantine")
        notify(f"git: review {quarantine}, then `claude-bottle keep {state.slug} --release` lets the bottle go")
    if not complete:
        notify(
            f"git: {workspace} could not be checked whole (too deep, too large or unreadable): review it "
            "before running git anywhere under it"
        )
