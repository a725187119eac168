"""`claude-bottle ls`: every bottle, from state dirs plus one inventory call per backend."""

from __future__ import annotations

import argparse
import json
from typing import Any

from claude_bottle.cli._common import out, print_columns
from claude_bottle.work.inventory import list_bottles


def register(sub: Any) -> None:
    p = sub.add_parser("ls", help="list bottles")
    p.add_argument("--json", action="store_true", help="JSON array of objects")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    rows = list_bottles()
    if args.json:
        out.print_json(json.dumps([r.as_json() for r in rows]))
        return 0
    if not rows:
        out.print("no bottles (start one with: claude-bottle start AGENT)")
        return 0
    columns: tuple[str, ...] = ("SLUG", "AGENT", "BACKEND", "STATUS", "RESUMABLE", "CREATED", "KEPT")
    table: list[tuple[str, ...]] = [
        (r.slug, r.agent, r.backend, r.status, "yes" if r.resumable else "", r.created, r.preserved or "") for r in rows
    ]
    if any(r.ports for r in rows):  # as `docker ps` shows them: HOST_ADDRESS:HOST->GUEST
        columns = (*columns, "PORTS")
        table = [
            (*t, ",".join(f"{p.address}:{p.host}->{p.guest}" for p in r.ports))
            for t, r in zip(table, rows, strict=True)
        ]
    print_columns(columns, table)
    return 0
