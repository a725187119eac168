"""`claude-bottle requests [SLUG]`: what bottles asked for and wait for (capability requests, SPEC S4)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from claude_bottle.bottle.capabilities import Request, pending
from claude_bottle.bottle.state import list_state_dirs, resolve_slug
from claude_bottle.cli._common import out, print_columns
from claude_bottle.terminal import escape_controls


def register(sub: Any) -> None:
    p = sub.add_parser("requests", help="pending capability requests (packages, hosts) across bottles")
    p.add_argument("slug", nargs="?", metavar="SLUG", help="only this bottle")
    p.add_argument("--json", action="store_true", help="JSON array of objects")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from claude_bottle.work.upkeep import bring_home, files_elsewhere

    states = [resolve_slug(args.slug)] if args.slug else list_state_dirs()
    for s in states:
        # A running bottle elsewhere writes its requests on its engine: fetched first (a stopped one's
        # came home at its stop).
        if files_elsewhere(s) and s.read().status == "running":
            bring_home(s)
    rows: list[Request] = [r for s in states for r in pending(s)]
    if args.json:
        out.print_json(json.dumps([r.as_json() for r in rows]))
        return 0
    if not rows:
        out.print("no pending requests")
        return 0
    columns = ("SLUG", "ID", "KIND", "NAME", "AGE", "REASON")
    # The reason is the agent's words: shown with its control characters escaped, never raw.
    table = [(r.slug, r.id, r.kind, r.name, r.age(), escape_controls(r.reason)) for r in rows]
    print_columns(columns, table)
    sys.stdout.write("grant with `claude-bottle grant SLUG --request ID` (or --all), refuse with `deny`\n")
    return 0
