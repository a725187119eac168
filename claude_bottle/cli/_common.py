"""Shared CLI pieces: consoles, the manifest option, slug lookup, and the tty/confirm helper."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from ..errors import BottleError
from ..state import StateDir, bottle_home, resolve_slug

if TYPE_CHECKING:
    from ..manifest import Manifest

__all__ = ["add_manifest_arg", "confirm", "err", "is_tty", "load", "out", "progress", "slug_arg", "state_for"]

# Results (slugs, tables, JSON) go to stdout; progress and messages to stderr. Colour only on a tty.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def is_tty() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def confirm(question: str) -> bool:
    """y/N on a tty. Without one there is nobody to ask: refuse rather than guess."""
    if not sys.stdin.isatty():
        raise BottleError(f"{question} needs an answer but stdin is not a terminal: pass --yes to proceed")
    err.print(f"{question} [y/N] ", end="")
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def add_manifest_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--manifest",
        metavar="PATH",
        type=Path,
        help="manifest file (default: claude-bottle.toml here or above, then ~/.claude-bottle/manifest.toml)",
    )


def load(args: argparse.Namespace) -> Manifest:
    from ..manifest import find_manifest, load_manifest

    path = args.manifest if getattr(args, "manifest", None) else find_manifest(home=bottle_home())
    return load_manifest(path)


def slug_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slug", metavar="SLUG", help="bottle slug, or a unique prefix of one")


def state_for(args: argparse.Namespace) -> StateDir:
    return resolve_slug(args.slug)


def progress(line: str) -> None:
    err.print(f"[dim]{line}[/]", markup=True, highlight=False)
