"""`claude-bottle logs SLUG`: container logs, or with --egress the guard's audit lines."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rich.markup import escape

from claude_bottle.cli._common import err, out, slug_arg, state_for
from claude_bottle.terminal import LineEscaper


def register(sub: Any) -> None:
    p = sub.add_parser("logs", help="show a bottle's logs")
    slug_arg(p)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    p.add_argument("--egress", action="store_true", help="the guard's audit log (one JSON line per decision)")
    p.add_argument("--raw", action="store_true", help="the bottle's output byte for byte (control characters too)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from claude_bottle.work.run import logs_of

    state = state_for(args)
    if not args.egress:
        # The bottle's output was shaped by the agent: control characters are shown escaped, so nothing in
        # it can drive this terminal (set the clipboard, the title, clear the screen), unless --raw.
        escaper = LineEscaper()
        stdout = sys.stdout.buffer

        def sink(data: bytes) -> None:
            stdout.write(data if args.raw else escaper.feed(data).encode())
            stdout.flush()

        rc = logs_of(state, follow=args.follow, sink=sink)
        if not args.raw:
            stdout.write(escaper.feed(b"", final=True).encode())
        return rc
    from claude_bottle.work.upkeep import bring_home, files_elsewhere

    remote = files_elsewhere(state)
    why = bring_home(state)  # a bottle on a remote engine keeps its log there until it stops
    if why:
        err.print(f"[yellow]showing the log as last brought home[/]: {escape(why)}")
    path = state.audit_path
    if not path.exists():
        return 0
    printed = 0
    f = path.open(encoding="utf-8")
    try:
        while True:
            line = f.readline()
            if line:
                printed += 1
                try:
                    out.print(json.dumps(json.loads(line)), markup=False, highlight=False)
                except ValueError:
                    continue
            elif args.follow:
                time.sleep(2.0 if remote else 0.2)
                if remote and not bring_home(state):
                    # The log came home as a new file: go on from the line after the last one shown.
                    f.close()
                    f = path.open(encoding="utf-8")
                    for _ in range(printed):
                        f.readline()
            else:
                return 0
    finally:
        f.close()
