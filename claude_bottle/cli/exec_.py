"""`claude-bottle exec SLUG -- CMD...`: run a command in the agent container, as the agent user."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from claude_bottle.cli._common import slug_arg, state_for
from claude_bottle.errors import BottleError


def register(sub: Any) -> None:
    p = sub.add_parser("exec", help="run a command in a bottle (its exit code is returned)")
    slug_arg(p)
    p.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    p.add_argument("-w", "--workdir", help="working directory inside the bottle (default /workspace)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD", help="command and its arguments")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise BottleError("no command given: claude-bottle exec SLUG -- CMD [ARGS...]")
    from claude_bottle.work.run import exec_in

    return exec_in(
        state_for(args), cmd, tty=args.tty, interactive=not sys.stdin.isatty() or args.tty, workdir=args.workdir
    )
