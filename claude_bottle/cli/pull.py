"""`claude-bottle pull SLUG [--to DIR]`: a remote bottle's workspace (and its log and transcripts) brought
home now. Into the bottle's state dir, never over the operator's own files: a worktree bottle's checkout
(then `diff`, `log`, `merge` read it), else `<state>/workspace`; `--to` copies that to a new folder."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from rich.markup import escape

from ..errors import BottleError
from ._common import err, out, slug_arg, state_for


def register(sub: Any) -> None:
    p = sub.add_parser("pull", help="bring a remote bottle's workspace, log and transcripts home now")
    slug_arg(p)
    p.add_argument("--to", metavar="DIR", help="also copy the workspace to DIR (which must not exist)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..lifecycle import bring_home, elsewhere

    state = state_for(args)
    to = Path(args.to).expanduser().absolute() if args.to else None
    if to is not None and (to.exists() or to.is_symlink()):
        raise BottleError(f"--to {to}: it exists; name a folder that does not (nothing is copied over files)")
    if not elsewhere(state):
        raise BottleError(
            f"{state.slug} runs on this machine: its workspace is already here ({state.read().workspace})"
        )
    why = bring_home(state)
    if why:
        err.print(f"[yellow]the engine did not answer; this is what the last trip brought[/]: {escape(why)}")
    record = state.read_whole()
    home = state.path / ("worktree" if record.worktree else "workspace")
    if not home.is_dir():
        raise BottleError(f"{state.slug} has no workspace brought home yet (it never ran?)")
    skipped = state.home_skipped
    if skipped.is_file():
        count = len(skipped.read_text(encoding="utf-8", errors="replace").splitlines())
        err.print(f"[yellow]{count} member(s) refused on the way home[/] (links out, devices): see {skipped}")
    # What git would read as configuration or code there was written by the agent: judged whole before
    # the operator is pointed at it (what is not safe is moved to git-quarantine, as after a run).
    from ..gitguard import settle

    findings, _complete = settle(home, 0.0, state.path / "git-quarantine")
    for f in findings:
        err.print(escape(f.line()), highlight=False)
    if to is not None:
        shutil.copytree(home, to, symlinks=True)
        home = to
    hint = "`claude-bottle diff " + state.slug + "`" if record.worktree else f"diff -r {record.workspace} {home}"
    out.print(str(home), markup=False, highlight=False)
    err.print(f"[dim]the bottle's workspace is at {escape(str(home))}; compare with {escape(hint)}[/]")
    return 0
