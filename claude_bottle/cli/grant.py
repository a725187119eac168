"""`claude-bottle grant SLUG --egress HOST[:PORT]`: change a running bottle's egress policy, no restart."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import BottleError
from ._common import err, out, slug_arg, state_for


def register(sub: Any) -> None:
    p = sub.add_parser("grant", help="grant (or --revoke) egress to a bottle, live")
    slug_arg(p)
    p.add_argument(
        "--egress",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="host pattern to allow, as in egress.allow (repeatable)",
    )
    p.add_argument("--private", action="store_true", help="let these names resolve to private addresses")
    p.add_argument("--revoke", action="store_true", help="take the given grants back")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ..lifecycle import grant_egress
    from ..manifest import EgressRule

    if not args.egress:
        raise BottleError("nothing to grant: pass --egress HOST[:PORT] (repeatable)")
    rules = []
    for spec in args.egress:
        try:
            rule = EgressRule.model_validate(spec)
        except ValidationError as exc:
            raise BottleError(f"--egress {spec!r}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
        rules.append((rule.model_copy(update={"private": True}) if args.private else rule).rule())
    state = state_for(args)
    grants = grant_egress(state, rules, revoke=args.revoke)
    out.print(state.slug)
    err.print(
        ("revoked " if args.revoke else "granted ")
        + ", ".join(r.label() for r in rules)
        + f"; live grants now: {', '.join(g.label() for g in grants) or 'none'}"
    )
    return 0
