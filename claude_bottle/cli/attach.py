"""`claude-bottle attach SLUG`: this terminal on claude in a running bottle (started there if need be)."""

from __future__ import annotations

import argparse
from typing import Any

from claude_bottle.cli._common import err, is_tty, slug_arg, state_for, tell
from claude_bottle.errors import BottleError


def register(sub: Any) -> None:
    p = sub.add_parser("attach", help="attach this terminal to claude in a running bottle (Ctrl-b d detaches)")
    slug_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from claude_bottle.work.run import attach_bottle

    if not is_tty():
        raise BottleError("attach needs a terminal: run it from one (or use `claude-bottle logs SLUG`)")
    err.print("[dim]Ctrl-b d detaches (claude keeps running)[/]")
    return attach_bottle(state_for(args), notify=tell)
