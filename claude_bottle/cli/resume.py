"""`claude-bottle resume SLUG`: a new generation of a bottle from its state dir, continuing its session."""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape

from claude_bottle.cli._common import check_terminal, err, out, progress, run_agent, slug_arg, state_for, tell


def register(sub: Any) -> None:
    p = sub.add_parser("resume", help="start a stopped or crashed bottle again and continue its claude session")
    slug_arg(p)
    p.add_argument("--detach", "-d", action="store_true", help="leave the bottle running and return")
    p.add_argument("--prompt", "-p", metavar="TEXT", help="continue headless with this prompt")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from claude_bottle.work.start import resume_bottle

    state = state_for(args)
    record = state.read_whole()
    check_terminal(prompt=args.prompt, detach=args.detach)
    err.print(
        f"resuming [bold]{escape(state.slug)}[/] (generation {record.generation + 1}, "
        f"session {record.session_id if state.resumable(record) else 'new: no transcript to continue'})"
    )
    started = resume_bottle(state, progress=progress, notify=tell)
    out.print(started.slug)
    return run_agent(started, prompt=args.prompt, detach=args.detach, resume=True)
