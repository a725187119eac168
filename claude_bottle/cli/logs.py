"""`claude-bottle logs SLUG`: container logs, or with --egress the guard's audit lines."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ..backend import get_bottle_backend
from ._common import out, slug_arg, state_for


def register(sub: Any) -> None:
    p = sub.add_parser("logs", help="show a bottle's logs")
    slug_arg(p)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    p.add_argument("--egress", action="store_true", help="the guard's audit log (one JSON line per decision)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    state = state_for(args)
    if not args.egress:
        return get_bottle_backend(state.read().backend).logs(state=state, follow=args.follow)
    path = state.audit_path
    if not path.exists():
        return 0
    with path.open(encoding="utf-8") as f:
        while True:
            line = f.readline()
            if line:
                try:
                    out.print(json.dumps(json.loads(line)), markup=False, highlight=False)
                except ValueError:
                    continue
            elif args.follow:
                time.sleep(0.2)
            else:
                return 0
