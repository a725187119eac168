"""`claude-bottle stop SLUG`: stop and remove a bottle's containers; its state stays unless --rm."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import err, out, slug_arg, state_for


def register(sub: Any) -> None:
    p = sub.add_parser("stop", help="stop a bottle (state is kept for resume unless --rm)")
    slug_arg(p)
    p.add_argument("--rm", action="store_true", help="also remove its state dir (refused if preserved)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..lifecycle import stop_bottle

    state = state_for(args)
    stop_bottle(state, remove=args.rm, notify=lambda line: err.print(line, markup=False, highlight=False))
    out.print(state.slug)
    err.print("stopped" + (" and removed" if args.rm else f"; state kept in {state.path}"))
    return 0
