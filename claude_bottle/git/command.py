"""Git as the host runs it for worktree mode: never in the agent's checkout, always with no hook or fsmonitor
whatever a config says, with a time limit, and in the operator's repository as its owner (git insists)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from claude_bottle import process
from claude_bottle.bottle.state import StateDir
from claude_bottle.errors import BottleError

__all__ = [
    "BRANCH_PREFIX",
    "CHECKOUT",
    "GIT_TIMEOUT",
    "WorktreeError",
    "checkout_path",
    "git",
    "info_of",
    "op",
    "out",
    "owner",
]

BRANCH_PREFIX = "claude-bottle/"


CHECKOUT = "worktree"


GIT_TIMEOUT = 300


# On every git the host runs here: no fsmonitor daemon, no hooks, whatever a config says.
_HARDEN = ("-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null")


_REPO_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES")


class WorktreeError(BottleError):
    """Worktree mode cannot do what was asked; the text says why and what to do."""


def git(
    *args: str | Path,
    isolated: bool = False,
    stdin: bytes | None = None,
    check: bool = True,
    index: Path | None = None,
    owner: tuple[int, int, str] | None = None,
    harden: bool = True,
) -> process.Output:
    env = dict(os.environ)
    env.update(GIT_TERMINAL_PROMPT="0", GIT_PAGER="cat", PAGER="cat", LC_ALL="C")
    for var in _REPO_VARS:
        env.pop(var, None)
    if isolated:  # the view and the new checkout: no system or global configuration at all
        env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null", GIT_ATTR_NOSYSTEM="1")
    if index is not None:
        env["GIT_INDEX_FILE"] = str(index)
    user = group = None
    cwd = None
    if owner is not None:  # root on someone else's repository: git runs as them, with their configuration
        env["HOME"] = owner[2]
        user, group, cwd = owner[0], owner[1], "/"
    try:
        result = process.capture(
            ["git", *(_HARDEN if harden else ()), *map(str, args)],
            input=stdin,
            only_env=env,
            timeout=GIT_TIMEOUT,
            cwd=cwd,
            user=user,
            group=group,
        )
    except process.Missing:
        raise WorktreeError("git is not installed: worktree mode needs it on the host (apt install git)") from None
    except process.TimedOut:
        raise WorktreeError(f"git {verb(args)} took over {GIT_TIMEOUT} s: stopped") from None
    if check and not result.ok:
        raise WorktreeError(f"git {verb(args)} failed: {result.last_error_line()}")
    return result


def verb(args: Sequence[str | Path]) -> str:
    """The git command in an argument list (past -C DIR, --git-dir DIR, -c KEY=VALUE, ...)."""
    i = 0
    while i < len(args) and str(args[i]) in ("-C", "-c", "--git-dir", "--work-tree"):
        i += 2
    return str(args[i]) if i < len(args) else "?"


def owner(path: Path) -> tuple[int, int, str] | None:
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


def op(top: Path, *args: str | Path, stdin: bytes | None = None, check: bool = True) -> process.Output:
    """Git in the operator's repository (never the agent's checkout), as its owner."""
    return git("-C", top, *args, stdin=stdin, check=check, owner=owner(top))


def out(*args: str | Path, isolated: bool = False) -> str:
    return git(*args, isolated=isolated).stdout.decode().strip()


def checkout_path(state: StateDir) -> Path:
    return state.path / CHECKOUT


def info_of(state: StateDir) -> dict[str, Any]:
    info = state.read().worktree
    if not info:
        raise WorktreeError(f"{state.slug} is not a worktree bottle: its agent edits {state.read().workspace} directly")
    return info
