"""`diff`, `log`, `merge` and `apply`: a bottle's work in a tree of its own, read and brought home: a
worktree bottle's commits and changes (worktree.py), a copy-mode bottle's changes (workcopy.py).
Everything shown was written by the agent: control characters are escaped before they reach the terminal."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from claude_bottle.bottle.state import StateDir
from claude_bottle.cli._common import err, out, slug_arg, state_for
from claude_bottle.errors import BottleError
from claude_bottle.terminal import escape_controls


def register(sub: Any) -> None:
    d = sub.add_parser("diff", help="a bottle's changes against where it started (worktree: committed and not)")
    slug_arg(d)
    d.add_argument("--stat", action="store_true", help="only the files and their line counts")
    d.set_defaults(run=run_diff)
    lg = sub.add_parser("log", help="a worktree bottle's commits on its branch claude-bottle/SLUG")
    slug_arg(lg)
    lg.set_defaults(run=run_log)
    m = sub.add_parser("merge", help="merge a worktree bottle's commits into your current branch")
    slug_arg(m)
    m.add_argument("--squash", action="store_true", help="as one commit")
    m.set_defaults(run=run_merge)
    a = sub.add_parser(
        "apply", help="a bottle's changes written into your workspace (worktree: as uncommitted changes)"
    )
    slug_arg(a)
    a.set_defaults(run=run_apply)


def _show(text: str) -> None:
    sys.stdout.write(escape_controls(text))
    sys.stdout.flush()


def _copy_mode(state: StateDir) -> bool:
    record = state.read()
    return not record.worktree and (record.manifest.get("agent") or {}).get("workspace_mode") == "copy"


def run_diff(args: argparse.Namespace) -> int:
    state = state_for(args)
    if _copy_mode(state):
        from claude_bottle.hostfs.copy_mode import diff as copy_diff

        _show(copy_diff(state, stat_only=args.stat))
        return 0
    from claude_bottle.git.worktree import diff

    _show(diff(state, stat_only=args.stat))
    return 0


def _no_commits(state: StateDir, verb: str) -> None:
    if _copy_mode(state):
        raise BottleError(
            f"{state.slug} works on a copy, with no commits to {verb}: `claude-bottle diff {state.slug}`, then "
            f"`claude-bottle apply {state.slug}`"
        )


def run_log(args: argparse.Namespace) -> int:
    from claude_bottle.git.worktree import log

    state = state_for(args)
    _no_commits(state, "show")
    _show(log(state))
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from claude_bottle.git.worktree import merge
    from claude_bottle.work.stop import ensure_stopped

    state = state_for(args)
    _no_commits(state, "merge")
    ensure_stopped(state, "merge")
    out.print(escape_controls(merge(state, squash=args.squash)), markup=False, highlight=False)
    return 0


def run_apply(args: argparse.Namespace) -> int:
    from claude_bottle.work.stop import ensure_stopped

    state = state_for(args)
    ensure_stopped(state, "apply")
    if _copy_mode(state):
        from claude_bottle.hostfs.copy_mode import apply as copy_apply

        err.print(escape_controls(copy_apply(state)), markup=False, highlight=False)
        return 0
    from claude_bottle.git.worktree import apply

    err.print(escape_controls(apply(state)), markup=False, highlight=False)
    return 0
