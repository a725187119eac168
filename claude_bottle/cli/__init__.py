"""Command-line interface: argparse dispatch over one module per subcommand, one error handler."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence

from rich.markup import escape

from claude_bottle import __version__
from claude_bottle.cli import (
    _common,
    attach,
    cleanup,
    doctor,
    exec_,
    grant,
    init,
    keep,
    logs,
    ls,
    port,
    pull,
    requests,
    resume,
    review,
    shell,
    start,
    stop,
    suggest,
    top,
    trust,
    verify,
)
from claude_bottle.errors import EXIT_USAGE, BottleError
from claude_bottle.terminal import escape_controls

__all__ = ["main"]

VERBS = (
    init,
    trust,
    suggest,
    start,
    ls,
    top,
    attach,
    exec_,
    shell,
    logs,
    port,
    stop,
    resume,
    grant,
    requests,
    keep,
    verify,
    review,
    pull,
    cleanup,
    doctor,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="claude-bottle", description="Run Claude Code agents in sealed bottles.")
    parser.add_argument("--version", action="version", version=f"claude-bottle {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command run")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        verb.register(sub)
    return parser


def os_error_line(exc: OSError) -> str:
    """One line for a failed host operation, naming the fix where there is a usual one."""
    where = f" ({exc.filename})" if exc.filename else ""
    what = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{what}{where}: free some space there (or set CLAUDE_BOTTLE_HOME to a roomier place) and retry"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{what}{where}: check who owns it (run claude-bottle as the user who made it)"
    return f"{what}{where}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse: --help is 0, bad usage is 2
        return int(exc.code or 0) if exc.code in (0, None) else EXIT_USAGE
    if args.verbose or os.environ.get("CLAUDE_BOTTLE_DEBUG"):
        logging.basicConfig(level=logging.DEBUG, format="%(message)s", stream=sys.stderr)
    try:
        rc: int = args.run(args)
    except BottleError as exc:
        _common.err.print(f"[red]error:[/] {escape(escape_controls(str(exc)))}")  # it may name agent-made paths
        return exc.exit_code
    except KeyboardInterrupt:
        _common.err.print("interrupted")
        return 130
    except OSError as exc:  # the host's side: a full disk, a permission, a vanished file
        _common.err.print(f"[red]error:[/] {escape(escape_controls(os_error_line(exc)))}")
        return 1
    except SystemExit as exc:  # SIGTERM/SIGHUP during a start or a foreground run (lifecycle)
        if isinstance(exc.code, int) and exc.code > 128:
            _common.err.print(f"terminated (signal {exc.code - 128})")
            return exc.code
        raise
    return rc
