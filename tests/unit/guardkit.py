"""Helpers for the guard's tests: a real ClientHello made in memory, a guard served on loopback, a client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from claude_bottle.guard.audit import AuditLog
from claude_bottle.guard.config import Secrets
from claude_bottle.guard.policy import PolicyFile
from claude_bottle.guard.proxy import Guard


def client_hello(server_name: str) -> bytes:
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


@contextlib.asynccontextmanager
async def serving_guard(
    tmp: Path, allow: list[dict[str, Any]], secrets: Secrets | None = None
) -> AsyncIterator[tuple[int, Path]]:
    """A guard on a loopback port with this allow list; (port, audit log path). Closed before the loop ends."""
    policy = tmp / "policy.json"
    policy.write_text(json.dumps({"bottle": "t-abcde", "allow": allow}))
    audit = tmp / "egress.jsonl"
    log = AuditLog(audit, bottle="t-abcde")
    guard = Guard(PolicyFile(policy), log, secrets)
    server = await guard.serve("127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], audit
    finally:
        server.close()
        await server.wait_closed()
        for _ in range(100):
            if guard.connections == 0:
                break
            await asyncio.sleep(0.01)
        log.close()


async def send(port: int, raw: bytes) -> bytes:
    """Send raw bytes to the guard and read until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return data


async def audit_lines(path: Path, n: int = 1) -> list[dict[str, Any]]:
    """Audit lines, waiting a little for the first n (an allowed connection's closing line comes last)."""
    for _ in range(200):
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        if len(lines) >= n:
            return lines
        await asyncio.sleep(0.01)
    return [json.loads(x) for x in path.read_text().splitlines()]


def decisions(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The decision lines (allow/deny), without the closing lines and summaries."""
    return [ln for ln in lines if "decision" in ln]


def ends(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [ln for ln in lines if ln.get("kind") == "end"]
