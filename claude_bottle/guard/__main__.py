"""Run the guard: python3 -m claude_bottle.guard --policy FILE [--secrets FILE] [--audit FILE] ..."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from claude_bottle.guard.audit import AuditLog
from claude_bottle.guard.config import load_secrets
from claude_bottle.guard.dns import DnsServer
from claude_bottle.guard.policy import PolicyFile
from claude_bottle.guard.proxy import Guard


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


SUMMARY_INTERVAL = 1.0


async def _summaries(audit: AuditLog) -> None:
    """Floods are summarised on a timer, not when the next query happens to arrive."""
    while True:
        await asyncio.sleep(SUMMARY_INTERVAL)
        audit.flush_summaries()


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    """The guard, until `stop` is set: proxy and DNS served, the ready mark written, then on stop every
    open connection closed with its closing audit line, the last summaries flushed, the log's reserve
    given back."""
    policy = PolicyFile(Path(args.policy))
    secrets_path = Path(args.secrets) if args.secrets else None
    secrets = load_secrets(secrets_path)
    audit = AuditLog(Path(args.audit) if args.audit else None, bottle=policy.current().bottle)
    clients = [c for c in (args.clients or "").split(",") if c]
    guard = Guard(
        policy,
        audit,
        secrets,
        cafile=args.cafile if args.cafile and Path(args.cafile).exists() else None,
        clients=clients,
        requests=Path(args.requests) if args.requests else None,
    )
    server = await guard.serve(*_hostport(args.listen))
    dns_transport = dns_tcp = None
    if args.dns:
        local = {"egress": args.guard_ip} if args.guard_ip else {}
        dns = DnsServer(
            audit, lambda: {**local, **policy.current().local_names}, lambda: guard.scanner, guard.client_allowed
        )
        dns_transport, dns_tcp = await dns.serve(*_hostport(args.dns))
    summaries = asyncio.create_task(_summaries(audit))
    print(f"claude-bottle guard listening on {args.listen}" + (f", dns on {args.dns}" if args.dns else ""), flush=True)
    if args.ready_file:
        Path(args.ready_file).write_text("listening\n")  # the CLI waits for this mark, not a healthcheck
    await stop.wait()
    server.close()
    if dns_transport is not None and dns_tcp is not None:
        dns_transport.close()
        dns_tcp.close()
    # Open connections get their closing audit line before the guard goes.
    await guard.close_connections()
    summaries.cancel()
    audit.flush_summaries()
    audit.close()


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(args, stop)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="claude-bottle-guard")
    parser.add_argument("--policy", required=True, help="policy JSON, re-read when it changes")
    parser.add_argument("--secrets", help="credential routes and honeytokens (JSON)")
    parser.add_argument("--audit", help="audit log (JSON lines); stdout if unset")
    parser.add_argument("--listen", default="0.0.0.0:3128")
    parser.add_argument("--dns", help="serve DNS on HOST:PORT (udp and tcp)")
    parser.add_argument("--guard-ip", help="the address `egress` resolves to")
    parser.add_argument("--cafile", help="CA bundle for upstream TLS (credential routes)")
    parser.add_argument("--ready-file", help="written once the guard is listening")
    parser.add_argument("--clients", help="comma-separated networks allowed to use the guard (default: any)")
    parser.add_argument("--requests", help="capability requests (JSON lines, appended; none accepted if unset)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    asyncio.run(_main(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
