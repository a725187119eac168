"""Run the guard: python3 -m claude_bottle.egress --policy FILE --audit FILE [--listen HOST:PORT]."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from .audit import AuditLog
from .policy import PolicyFile
from .proxy import Guard


async def _main(args: argparse.Namespace) -> None:
    policy = PolicyFile(Path(args.policy))
    audit = AuditLog(Path(args.audit) if args.audit else None, bottle=policy.current().bottle)
    guard = Guard(policy, audit)
    host, _, port = args.listen.rpartition(":")
    server = await guard.serve(host or "0.0.0.0", int(port))  # noqa: S104 - the guard serves its bottle's network
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"claude-bottle guard listening on {args.listen}", flush=True)
    async with server:
        await stop.wait()
    audit.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="claude-bottle-guard")
    parser.add_argument("--policy", required=True)
    parser.add_argument("--audit")
    parser.add_argument("--listen", default="0.0.0.0:3128")
    args = parser.parse_args(argv)
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
