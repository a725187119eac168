"""`claude-bottle top`: every bottle of this namespace, live (Textual: docs/design/operator.md); `--once --json`
the same data once, for scripts. Keys act on the selected bottle through the verbs themselves (`grant`,
`deny`, `stop`, `attach` run as the CLI would), so `top` can do nothing the CLI could not."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from claude_bottle.cli._common import out
from claude_bottle.cli.top_table import text_lines


def register(sub: Any) -> None:
    p = sub.add_parser("top", help="a live view of every bottle: state, activity, egress, requests; keys act")
    p.add_argument("--once", action="store_true", help="print the view once and exit (with --json: JSON)")
    p.add_argument("--json", action="store_true", help="with --once: one JSON array of objects")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from claude_bottle.errors import BottleError
    from claude_bottle.work.overview import snapshot

    if args.json and not args.once:
        raise BottleError("--json goes with --once: claude-bottle top --once --json")
    if not 0.2 <= args.interval <= 60:
        raise BottleError("--interval: between 0.2 and 60 seconds")
    if args.once:
        views = snapshot()
        if args.json:
            out.print_json(json.dumps([v.as_json() for v in views]))
        else:
            for line in text_lines(views):
                sys.stdout.write(line + "\n")
        return 0
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise BottleError("top needs a terminal: for scripts, claude-bottle top --once --json")
    from claude_bottle.cli.top_app import TopApp

    app = TopApp(snapshot, interval=args.interval, act=act)
    after = app.run()
    if after and after[0] == "attach":
        return int(subprocess.call([sys.executable, "-m", "claude_bottle", "attach", after[1]]))
    return 0


def act(*verb: str, whole: bool = False) -> tuple[int, str]:
    """Run a verb as the CLI (`grant SLUG --request ID --detach`, `stop SLUG`): its exit code and its last
    line (`whole`: all it printed)."""
    proc = subprocess.run(
        [sys.executable, "-m", "claude_bottle", *verb],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1800, check=False,
    )  # fmt: skip
    if whole:
        return proc.returncode, proc.stdout if proc.returncode == 0 else proc.stderr.strip()
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    return proc.returncode, lines[-1] if lines else ""
