"""`claude-bottle suggest`: the hosts this project's package files need that its manifest does not allow yet."""

from __future__ import annotations

import argparse
import json
from typing import Any

from claude_bottle.cli._common import add_manifest_arg, err, out


def register(sub: Any) -> None:
    p = sub.add_parser("suggest", help="registry hosts the project's lockfiles need, for egress.allow")
    add_manifest_arg(p)
    p.add_argument("--bottle", default="default", help="the bottle whose allow list is compared (default: default)")
    p.add_argument("--json", action="store_true", help="JSON array of objects (host, source, why)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from claude_bottle.bottle.state import bottle_home
    from claude_bottle.errors import BottleError
    from claude_bottle.manifest import find_manifest, load_manifest
    from claude_bottle.manifest.suggest import suggest, toml_lines

    path = args.manifest or find_manifest(home=bottle_home())
    manifest = load_manifest(path)  # only read for its allow list: nothing in it is used
    spec = manifest.bottles.get(args.bottle)
    if spec is None:
        raise BottleError(f"no bottle {args.bottle!r} in {path}: choose one of {', '.join(sorted(manifest.bottles))}")
    workspace = path.resolve().parent
    found = suggest(workspace)
    allowed = [r.host for r in spec.egress.allow]
    lines = toml_lines(found, allowed=allowed)
    if args.json:
        new = {ln.split('"')[1] for ln in lines}
        out.print_json(json.dumps([s.__dict__ for s in found if s.host in new]))
        return 0
    if not lines:
        err.print(f"nothing to add: {path} allows every registry its project's files name")
        return 0
    err.print(f"add to bottles.{args.bottle}.egress.allow in {path}:")
    for line in lines:
        out.print(line, markup=False, highlight=False)
    return 0
