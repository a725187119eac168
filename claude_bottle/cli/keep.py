"""`claude-bottle keep SLUG`: mark a bottle's state preserved, so `cleanup` never removes it."""

from __future__ import annotations

import argparse
from typing import Any

from claude_bottle.cli._common import err, out, slug_arg, state_for


def register(sub: Any) -> None:
    p = sub.add_parser("keep", help="preserve a bottle's state from cleanup (or --release it)")
    slug_arg(p)
    p.add_argument("--reason", default="kept by the operator", help="recorded in the .preserve marker")
    p.add_argument("--release", action="store_true", help="remove the marker: cleanup may reap it again")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    state = state_for(args)
    state.read()  # a clear error for a dir that is not a bottle
    if args.release:
        state.preserve_path.unlink(missing_ok=True)
        err.print(f"{state.slug}: released; cleanup may remove its state once it is not live")
    else:
        state.preserve(args.reason)
        err.print(f"{state.slug}: preserved ({args.reason}); cleanup will keep {state.path}")
    out.print(state.slug)
    return 0
