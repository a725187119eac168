"""Shared CLI pieces: consoles, the manifest option, slug lookup, and the tty/confirm helper."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from claude_bottle.bottle.state import StateDir, bottle_home, resolve_slug
from claude_bottle.errors import BottleError

if TYPE_CHECKING:
    from claude_bottle.manifest import Manifest
    from claude_bottle.work.common import Started

__all__ = [
    "add_manifest_arg",
    "check_terminal",
    "confirm",
    "err",
    "is_tty",
    "load",
    "out",
    "progress",
    "run_agent",
    "slug_arg",
    "state_for",
]

# Results (slugs, tables, JSON) go to stdout; progress and messages to stderr. Colour only on a tty.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def tell(line: str) -> None:
    """A line for the operator that may carry agent-made names (paths, findings): its control characters
    escaped, no markup read."""
    from claude_bottle.terminal import escape_controls

    err.print(escape_controls(line), markup=False, highlight=False)


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
    """The manifest for this command, once its content is trusted (asked here on a terminal)."""
    from claude_bottle.manifest import find_manifest
    from claude_bottle.manifest.trust import load_trusted

    path = args.manifest if getattr(args, "manifest", None) else find_manifest(home=bottle_home())

    def ask(lines: list[str]) -> bool:
        for line in lines:
            tell(line)
        return confirm("trust this manifest and use it")

    return load_trusted(
        path,
        home=bottle_home(),
        ask=ask if sys.stdin.isatty() else None,
        say=lambda line: err.print(f"[dim]{escape(line)}[/]"),
    )


def slug_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slug", metavar="SLUG", help="bottle slug, or a unique prefix of one")


def state_for(args: argparse.Namespace) -> StateDir:
    return resolve_slug(args.slug)


def progress(line: str) -> None:
    err.print(f"[dim]{line}[/]", markup=True, highlight=False)


def check_terminal(*, prompt: str | None, detach: bool) -> None:
    """Before anything is started: an interactive claude in the foreground needs this terminal."""
    if not prompt and not detach and not is_tty():
        raise BottleError(
            "an interactive claude needs a terminal: run this from one, pass --prompt TEXT for a "
            "headless run, or --detach and `claude-bottle attach SLUG` later"
        )


def run_agent(
    started: Started, *, prompt: str | None, detach: bool, resume: bool, interactive_prompt: bool = False
) -> int:
    """After start/resume: claude in the foreground (the bottle stops when it ends), or left running."""
    from claude_bottle.work.run import run_claude

    slug = started.slug
    if detach and not prompt:
        err.print(
            f"ready: `claude-bottle attach {slug}` for claude, `claude-bottle exec {slug} -- CMD`, "
            f"`claude-bottle stop {slug}`"
        )
        return 0
    if not detach and (not prompt or interactive_prompt):
        err.print(
            "[dim]claude runs in tmux inside the bottle: Ctrl-b d detaches (it keeps running), "
            f"`claude-bottle attach {slug}` comes back[/]"
        )
    result = run_claude(
        started,
        prompt=prompt,
        detach=detach,
        resume=resume,
        tty=is_tty(),
        notify=tell,
        interactive_prompt=interactive_prompt,
    )
    if result.detached:
        err.print(
            f"claude is running in {slug}: `claude-bottle attach {slug}` to watch, "
            f"`claude-bottle logs {slug}` for its output"
        )
    elif result.crashed:
        err.print(
            f"[yellow]claude ended with exit {result.exit_code}[/]: {slug} is preserved (crash); "
            f"`claude-bottle resume {slug}` continues its session"
        )
    return result.exit_code


def print_columns(columns: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    """Plain aligned columns (rich's Table costs ~4 ms a row, which `ls` of 30 bottles would feel)."""
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    for row in (columns, *rows):
        sys.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")
