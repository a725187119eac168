"""`diff`, `log`, `merge` and `apply`: a worktree bottle's work, read and brought home (issue 15, item 2).
Everything shown was written by the agent: control characters are escaped before they reach the terminal."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..terminal import escape_controls
from ._common import err, out, slug_arg, state_for


def register(sub: Any) -> None:
    d = sub.add_parser("diff", help="a worktree bottle's changes against where it started, committed and not")
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
    a = sub.add_parser("apply", help="a worktree bottle's changes as uncommitted changes in your working tree")
    slug_arg(a)
    a.set_defaults(run=run_apply)


def _show(text: str) -> None:
    sys.stdout.write(escape_controls(text))
    sys.stdout.flush()


def run_diff(args: argparse.Namespace) -> int:
    from ..worktree import diff

    _show(diff(state_for(args), stat_only=args.stat))
    return 0


def run_log(args: argparse.Namespace) -> int:
    from ..worktree import log

    _show(log(state_for(args)))
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from ..worktree import merge

    out.print(escape_controls(merge(state_for(args), squash=args.squash)), markup=False, highlight=False)
    return 0


def run_apply(args: argparse.Namespace) -> int:
    from ..worktree import apply

    err.print(escape_controls(apply(state_for(args))), markup=False, highlight=False)
    return 0
