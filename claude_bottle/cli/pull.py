"""`claude-bottle pull SLUG [--to DIR]`: a remote bottle's workspace (and its log and transcripts) brought
home now. Into the bottle's state dir, never over the operator's own files: a worktree bottle's checkout
(then `diff`, `log`, `merge` read it), a copy-mode bottle's copy (`diff`, `apply`), else `<state>/workspace`;
`--to` copies that to a new folder, leaving out whatever git would take for a repository."""

from __future__ import annotations

import argparse
import contextlib
import shutil
from pathlib import Path
from typing import Any

from rich.markup import escape

from claude_bottle.cli._common import err, out, slug_arg, state_for, tell
from claude_bottle.errors import BottleError


def register(sub: Any) -> None:
    p = sub.add_parser("pull", help="bring a remote bottle's workspace, log and transcripts home now")
    slug_arg(p)
    p.add_argument("--to", metavar="DIR", help="also copy the workspace to DIR (which must not exist)")
    p.set_defaults(run=run)


def _not_inert(folder: str, names: list[str]) -> list[str]:
    """What `pull --to` leaves out: whatever would make a folder of the copy a repository to git."""
    from claude_bottle.git.shape import HEAD_PEEK, inert, is_head

    out = []
    for name in names:
        p = Path(folder) / name
        kind = "l" if p.is_symlink() else "d" if p.is_dir() else "f"
        target = str(p.readlink()) if kind == "l" else ""
        data = None
        if kind == "f" and is_head(name):
            with contextlib.suppress(OSError), p.open("rb") as f:
                data = f.read(HEAD_PEEK)
        if inert(name, kind, target=target, data=data) is not None:
            tell(f"left out of the copy: {p} (git would read it as a repository)")
            out.append(name)
    return out


def run(args: argparse.Namespace) -> int:
    from claude_bottle.work.upkeep import bring_home, files_elsewhere

    state = state_for(args)
    to = Path(args.to).expanduser().absolute() if args.to else None
    if to is not None and (to.exists() or to.is_symlink()):
        raise BottleError(f"--to {to}: it exists; name a folder that does not (nothing is copied over files)")
    if not files_elsewhere(state):
        raise BottleError(
            f"{state.slug} runs on this machine: its workspace is already here ({state.read().workspace})"
        )
    why = bring_home(state)
    if why:
        err.print(f"[yellow]the engine did not answer; this is what the last trip brought[/]: {escape(why)}")
    record = state.read_whole()
    copy_mode = not record.worktree and (record.manifest.get("agent") or {}).get("workspace_mode") == "copy"
    home = state.path / ("worktree" if record.worktree else "copy" if copy_mode else "workspace")
    if not home.is_dir():
        raise BottleError(f"{state.slug} has no workspace brought home yet (it never ran?)")
    skipped = state.home_skipped
    if skipped.is_file():
        count = len(skipped.read_text(encoding="utf-8", errors="replace").splitlines())
        err.print(f"[yellow]{count} member(s) refused on the way home[/] (links out, devices): see {skipped}")
    # What git would read as configuration or code there was written by the agent: judged whole before
    # the operator is pointed at it (what is not safe is moved to git-quarantine, as after a run).
    from claude_bottle.git.settle import settle

    findings, _complete = settle(home, 0.0, state.path / "git-quarantine")
    for f in findings:
        tell(f.line())
    if to is not None:
        # A copy for the operator: nothing in it that git would take for a repository (workcopy.inert).
        shutil.copytree(home, to, symlinks=True, ignore=_not_inert)
        home = to
    if record.worktree or copy_mode:
        hint = f"`claude-bottle diff {state.slug}`"
    else:
        hint = f"diff -r {record.workspace} {home}"
    out.print(str(home), markup=False, highlight=False)
    err.print(f"[dim]the bottle's workspace is at {escape(str(home))}; compare with {escape(hint)}[/]")
    return 0
