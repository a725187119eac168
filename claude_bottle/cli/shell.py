"""`claude-bottle shell SLUG`: an interactive shell in the agent container."""

from __future__ import annotations

import argparse
from typing import Any

from claude_bottle.cli._common import is_tty, slug_arg, state_for


def register(sub: Any) -> None:
    p = sub.add_parser("shell", help="open a shell in a bottle")
    slug_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from claude_bottle.work.run import exec_in

    return exec_in(state_for(args), ["bash", "-l"], tty=is_tty(), interactive=True)
