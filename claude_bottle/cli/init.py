"""`claude-bottle init`: write a commented starter manifest that works as written."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from claude_bottle.bottle.state import bottle_home, write_private
from claude_bottle.cli._common import err, out
from claude_bottle.errors import BottleError


def register(sub: Any) -> None:
    p = sub.add_parser("init", help="write a starter claude-bottle.toml here")
    p.add_argument("--force", action="store_true", help="overwrite an existing manifest")
    p.add_argument(
        "--path", type=Path, default=Path("claude-bottle.toml"), help="where to write (default claude-bottle.toml)"
    )
    p.set_defaults(run=run)


def write_starter(path: Path, *, force: bool) -> Path:
    from claude_bottle.manifest import parse_manifest, starter_manifest

    if path.exists() and not force:
        raise BottleError(f"{path} already exists: edit it, or pass --force to replace it")
    text = starter_manifest()
    # The registries this project's package files need, each named with the file that asked for it.
    from claude_bottle.manifest.suggest import suggest, toml_lines

    lines = toml_lines(suggest(path.resolve().parent), allowed=["api.anthropic.com"])
    if lines:
        text = text.replace('  "api.anthropic.com",\n', '  "api.anthropic.com",\n' + "\n".join(lines) + "\n", 1)
    parse_manifest(text, path=path)  # the starter must always be valid
    write_private(path.resolve(), text, mode=0o644)
    return path


def run(args: argparse.Namespace) -> int:
    from claude_bottle.manifest.trust import trust_file

    path = write_starter(args.path, force=args.force)
    trust_file(path, home=bottle_home())  # written by claude-bottle itself, just now: trusted as it is
    out.print(str(path))
    err.print("next: claude-bottle start claude --detach   (then: claude-bottle ls)")
    return 0
