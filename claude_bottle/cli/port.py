"""`claude-bottle port SLUG [GUEST]`: the agent's published ports, as `docker port` lists them; publish one on
the host's loopback (or, asked by name, on every interface), or close it."""

from __future__ import annotations

import argparse
from typing import Any

from claude_bottle.cli._common import err, out, slug_arg, state_for


def register(sub: Any) -> None:
    p = sub.add_parser("port", help="list, publish or close the agent's ports on this host's loopback")
    slug_arg(p)
    p.add_argument("guest", nargs="?", type=int, help="the agent's port (a dev server's) to publish")
    p.add_argument("--host", type=int, help="the host's port (default: the same number)")
    p.add_argument("--close", action="store_true", help="stop publishing GUEST")
    p.add_argument(
        "--every-interface",
        action="store_true",
        help="publish on 0.0.0.0: anyone who reaches this machine reaches the agent's server",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from claude_bottle.errors import BottleError
    from claude_bottle.work import ports

    state = state_for(args)
    if args.guest is None:
        if args.close or args.host or args.every_interface:
            raise BottleError("name the agent's port: claude-bottle port SLUG GUEST [--host N | --close]")
        for p in ports.published(state):
            out.print(str(p))
        return 0
    if args.close:
        ports.close(state, args.guest)
        err.print(f"{state.slug}: port {args.guest} is no longer published")
        return 0
    address = ports.EVERY_INTERFACE if args.every_interface else ports.LOOPBACK
    for p in ports.publish(state, args.guest, host=args.host, address=address):
        if p.guest == args.guest:
            out.print(str(p))
            if p.address != ports.LOOPBACK:
                err.print(f"{state.slug}: port {p.guest} is published on every interface of this machine")
    return 0
