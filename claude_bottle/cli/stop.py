"""`claude-bottle stop SLUG`: stop and remove a bottle's containers; its state stays unless --rm."""

from __future__ import annotations

import argparse
from typing import Any

from claude_bottle.cli._common import err, out, slug_arg, state_for, tell
from claude_bottle.errors import BackendError


def register(sub: Any) -> None:
    p = sub.add_parser("stop", help="stop a bottle (state is kept for resume unless --rm)")
    slug_arg(p)
    p.add_argument("--rm", action="store_true", help="also remove its state dir (refused if preserved)")
    p.add_argument(
        "--forget",
        action="store_true",
        help="remove its state dir without asking its engine (one gone for good); what it left there stays",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from claude_bottle.work.stop import forget_bottle, stop_bottle
    from claude_bottle.work.upkeep import files_elsewhere

    state = state_for(args)
    if args.forget:
        forget_bottle(state)
        out.print(state.slug)
        err.print("forgotten here; whatever it left on its engine stays there")
        return 0
    kept_before = state.preserved()
    try:
        stop_bottle(state, remove=args.rm, notify=tell)
    except BackendError as exc:
        if not files_elsewhere(state):
            raise
        raise BackendError(
            f"{exc}; if that engine is gone for good, `claude-bottle stop {state.slug} --forget` forgets the "
            "bottle here (what it left there stays)"
        ) from exc
    out.print(state.slug)
    err.print("stopped" + (" and removed" if args.rm else f"; state kept in {state.path}"))
    kept = state.preserved() if not args.rm else None
    if kept and kept != kept_before:  # its files did not all come home: say why, once, here
        err.print(f"preserved: {kept}", markup=False, highlight=False)
    return 0
