"""`claude-bottle trust [PATH]`: trust a manifest's current content ahead of time (scripts, CI)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from claude_bottle.bottle.state import bottle_home
from claude_bottle.cli._common import err, out


def register(sub: Any) -> None:
    p = sub.add_parser(
        "trust",
        help="trust a manifest's current content (it is asked for again after every change)",
    )
    p.add_argument(
        "path", nargs="?", type=Path, metavar="PATH", help="the manifest (default: the one `start` would use here)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from claude_bottle.manifest import find_manifest
    from claude_bottle.manifest.trust import trust_file

    path = args.path or find_manifest(home=bottle_home())
    resolved, lines = trust_file(path, home=bottle_home())
    err.print(f"trusted {resolved}; it grants:", markup=False)
    for line in lines:
        err.print(f"  {line}", markup=False, highlight=False)
    out.print(str(resolved), markup=False)
    return 0
