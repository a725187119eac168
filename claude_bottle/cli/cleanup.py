"""`claude-bottle cleanup`: reap every leftover of every backend after one combined plan and one y/N."""

from __future__ import annotations

import argparse
from typing import Any

from ..backend import BottleBackend, BottleCleanupPlan, get_bottle_backend, known_backend_names
from ..errors import EXIT_BACKEND, BottleError
from ._common import confirm, err, out


def register(sub: Any) -> None:
    p = sub.add_parser("cleanup", help="remove leftover containers, networks and orphan state (all backends)")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask")
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    p.set_defaults(run=run)


def prepare() -> list[tuple[BottleBackend, BottleCleanupPlan]]:
    plans = []
    for name in known_backend_names():
        backend = get_bottle_backend(name)
        try:
            plans.append((backend, backend.prepare_cleanup()))
        except BottleError as exc:
            # A backend whose tool or engine is missing has nothing we can reap; say so, go on.
            err.print(f"--- {name} backend: skipped ({exc})")
    return plans


def run(args: argparse.Namespace) -> int:
    plans = prepare()
    for _, plan in plans:
        plan.print(out)
    if all(plan.empty() for _, plan in plans):
        return 0
    if args.dry_run:
        err.print("dry run: nothing changed")
        return 0
    if not args.yes and not confirm("remove all of the above?"):
        err.print("aborted: nothing changed")
        return 0
    failures: list[str] = []
    for backend, plan in plans:
        if not plan.empty():
            failures += backend.cleanup(plan, console=out)
    if failures:
        err.print(f"[red]{len(failures)} removal(s) failed[/]; the rest was removed")
        return EXIT_BACKEND
    return 0
