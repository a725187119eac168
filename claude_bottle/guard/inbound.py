"""The inbound relay: the agent's published ports (`ports = [...]`, `claude-bottle port`) reached from the host.

It runs in a container of its own (the guard's image, the guard's uid, no capability, read-only), on the
bottle's outbound network (where the engine publishes the host's loopback port to it) and on the bottle's
internal network at the one address the bottle's firewall lets in: the firewall accepts new connections
*from* that address and lets the agent answer them, never a connection the agent opens to it. So a
published port gives the agent no way out: the relay only ever connects to the agent, to a port the
operator named, and carries bytes back; it reads nothing of what it carries.

Each inbound connection has an audit line in the bottle's egress log (the guard's chain, under its
lock) when it is accepted, and an end line with its byte counts; a connection to a port nothing in the
bottle listens on is said so, with the usual cause (a dev server bound to localhost only).
Standard library only, as the rest of the guard.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from claude_bottle.guard.audit import AuditLog

__all__ = ["Mapping", "main", "parse_args", "serve"]

CHUNK = 64 * 1024
MAX_CONNECTIONS = 256  # at once, over every port: the relay's memory stays bounded
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Mapping:
    """One published port: the agent's port, and where the host publishes it (for the audit line)."""

    guest: int
    published: str  # e.g. "127.0.0.1:15173"

    @classmethod
    def parse(cls, text: str) -> Mapping:
        """`GUEST=ADDRESS:PORT`."""
        guest, sep, published = text.partition("=")
        if not sep or not guest.isdigit() or not 0 < int(guest) < 65536:
            raise argparse.ArgumentTypeError(f"not GUEST=ADDRESS:PORT: {text!r}")
        return cls(int(guest), published)


class Relay:
    def __init__(self, agent: str, log: AuditLog) -> None:
        self.agent = agent
        self.log = log
        self.slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self.ids = itertools.count(1)

    def handler(self, m: Mapping) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await self.handle(m, r, w)

        return handle

    async def handle(self, m: Mapping, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        peer = client_w.get_extra_info("peername") or ("?", 0)
        conn = next(self.ids)
        fields = {"kind": "inbound", "id": conn, "port": m.guest, "published": m.published, "peer": f"{peer[0]}"}
        if self.slots.locked():
            self.log.budgeted("proxy", ("deny", "inbound: too many connections"), **fields, decision="deny",
                              reason=f"more than {MAX_CONNECTIONS} inbound connections at once")  # fmt: skip
            client_w.close()
            return
        async with self.slots:
            started = time.monotonic()
            try:
                agent_r, agent_w = await asyncio.wait_for(
                    asyncio.open_connection(self.agent, m.guest), timeout=CONNECT_TIMEOUT
                )
            except (TimeoutError, OSError) as exc:
                why = (
                    f"nothing in the bottle answers on port {m.guest} (a server listening on localhost only "
                    "cannot be reached: bind it to 0.0.0.0)"
                    if isinstance(exc, ConnectionRefusedError)
                    else f"the agent's port {m.guest} does not answer ({type(exc).__name__})"
                )
                self.log.budgeted("proxy", ("refused", "inbound"), **fields, decision="refused", reason=why)
                client_w.close()
                return
            if not self.log.write(**fields, decision="allow"):
                # A connection that cannot be recorded is not made (as the guard's own decisions).
                agent_w.close()
                client_w.close()
                return
            try:
                counts = await asyncio.gather(_pipe(client_r, agent_w), _pipe(agent_r, client_w))
            finally:
                agent_w.close()
                client_w.close()
            ms = round((time.monotonic() - started) * 1000)
            self.log.write(kind="inbound-end", id=conn, port=m.guest, bytes_in=counts[0], bytes_out=counts[1], ms=ms)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> int:
    """Copy until either side ends; returns the bytes carried. Backpressure: one chunk in flight."""
    total = 0
    try:
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
            total += len(data)
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if dst.can_write_eof():
                dst.write_eof()
            else:
                dst.close()
    return total


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    log = AuditLog(Path(args.audit) if args.audit else None, bottle=args.bottle)
    relay = Relay(args.agent, log)
    servers = []
    for m in args.port:
        # Every address of the relay's own namespace: the engine's published port arrives on the outbound
        # side; the internal side is unreachable to the agent (its firewall refuses connections to us).
        servers.append(await asyncio.start_server(relay.handler(m), args.listen_address, m.guest))
    log.write(kind="inbound-listen", ports=[{"port": m.guest, "published": m.published} for m in args.port])
    if args.ready_file:
        Path(args.ready_file).write_text("ready\n")

    async def summaries() -> None:
        while True:
            await asyncio.sleep(1)
            log.flush_summaries()

    ticker = asyncio.ensure_future(summaries())
    await stop.wait()
    ticker.cancel()
    for s in servers:
        s.close()
    log.flush_summaries()
    log.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="claude-bottle-inbound")
    parser.add_argument("--agent", required=True, help="the agent's address on the bottle's internal network")
    parser.add_argument("--port", type=Mapping.parse, action="append", required=True, help="GUEST=ADDRESS:PORT")
    parser.add_argument("--listen-address", default="0.0.0.0", help="where to listen (default: every address)")  # noqa: S104
    parser.add_argument("--audit", help="the bottle's egress log (JSON lines); stdout if unset")
    parser.add_argument("--bottle", default="", help="the bottle's slug, in every line")
    parser.add_argument("--ready-file", help="written once every port listens")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(args, stop)

    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"claude-bottle inbound: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
