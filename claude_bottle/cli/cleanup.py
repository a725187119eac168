"""`claude-bottle cleanup`: reap every leftover of every backend after one combined plan and one y/N."""

from __future__ import annotations

import argparse
from typing import Any

from claude_bottle.cli._common import confirm, err, out
from claude_bottle.errors import EXIT_BACKEND


def register(sub: Any) -> None:
    p = sub.add_parser("cleanup", help="remove leftover containers, networks and orphan state (all backends)")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask")
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from claude_bottle.work.upkeep import cleanup_plans, run_cleanup

    plans = cleanup_plans(skipped=lambda line: err.print(line, markup=False))
    for plan in plans:
        for line in plan.lines():
            out.print(line, markup=False, highlight=False)
    if all(plan.empty() for plan in plans):
        return 0
    if args.dry_run:
        err.print("dry run: nothing changed")
        return 0
    if not args.yes and not confirm("remove all of the above?"):
        err.print("aborted: nothing changed")
        return 0
    failures = run_cleanup([p for p in plans if not p.empty()], lambda line: out.print(line, markup=False))
    if failures:
        err.print(f"[red]{len(failures)} removal(s) failed[/]; the rest was removed")
        return EXIT_BACKEND
    return 0
