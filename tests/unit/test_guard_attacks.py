"""The guard against the attacks of issue 9 (in-process, loopback): each test fails on the old guard.

Findings: 3 (neighbours), 4 (memory, decision lines, capacity, shutdown), 5 (the audit cannot record),
8 (tunnel first bytes), 9 (redaction and budgets), 13 (DNS floods).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.guard import dns as dns_module
from claude_bottle.guard import proxy
from claude_bottle.guard.audit import AuditLog
from claude_bottle.guard.config import Secrets
from claude_bottle.guard.dlp import Scanner
from claude_bottle.guard.dns import DnsServer
from claude_bottle.guard.policy import PolicyFile
from claude_bottle.guard.proxy import Guard
from claude_bottle.guard.tunnel import NEED, judge_tunnel

from .guardkit import client_hello, decisions, ends, send

HONEY = "AKIAHONEYTOKEN000001"


@contextlib.asynccontextmanager
async def upstream(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


@contextlib.asynccontextmanager
async def guard_on(
    tmp: Path, allow: list[dict[str, Any]], *, clients: list[str] | None = None, audit: AuditLog | None = None
) -> AsyncIterator[tuple[Guard, int, Path]]:
    policy = tmp / "policy.json"
    policy.write_text(json.dumps({"bottle": "t-abcde", "allow": allow}))
    path = tmp / "egress.jsonl"
    log = audit or AuditLog(path, bottle="t-abcde")
    guard = Guard(PolicyFile(policy), log, Secrets((), (HONEY,), Scanner(honeytokens=[HONEY])), clients=clients or [])
    server = await guard.serve("127.0.0.1", 0)
    try:
        yield guard, server.sockets[0].getsockname()[1], path
    finally:
        server.close()
        await guard.close_connections()
        await server.wait_closed()
        log.close()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


async def wait_for_line(path: Path, pred: Callable[[dict[str, Any]], bool], timeout: float = 5) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for ln in lines(path):
            if pred(ln):
                return ln
        assert time.monotonic() < deadline, f"no such audit line; have {lines(path)}"
        await asyncio.sleep(0.01)


# -- 3: only the bottle's own network may use the guard -------------------------------------------
def test_a_client_outside_the_bottle_network_gets_nothing(tmp_path: Path) -> None:
    async def go() -> None:
        async with guard_on(tmp_path, [], clients=["10.213.0.0/28"]) as (guard, port, audit):
            try:
                got = await send(port, b"GET /__bottle/health HTTP/1.1\r\n\r\n")
            except ConnectionResetError:
                got = b""  # closed unread: the kernel resets
            assert got == b""
            line = await wait_for_line(audit, lambda ln: ln.get("kind") == "client")
            assert (line["decision"], line["reason"], line["client"]) == (
                "deny",
                "client outside the bottle",
                "127.0.0.1",
            )
            dns = DnsServer(guard.audit, dict, Scanner, guard.client_allowed)
            assert (
                dns.handle(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01", "127.0.0.1")
                is None
            )
        # The control: the same request from inside the allowed network is answered.
        inside = tmp_path / "inside"
        inside.mkdir()
        async with guard_on(inside, [], clients=["127.0.0.0/8"]) as (_, port, _):
            assert (await send(port, b"GET /__bottle/health HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200")

    asyncio.run(go())


# -- 4: decided from the head, bodies streamed within a bounded memory -----------------------------
def test_a_forbidden_post_is_refused_before_its_body_is_read(tmp_path: Path) -> None:
    async def go() -> None:
        async with guard_on(tmp_path, []) as (_, port, audit):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST http://forbidden.test/ HTTP/1.1\r\nContent-Length: 33554432\r\n\r\n")
            await writer.drain()
            # No body byte was sent: the answer cannot depend on reading it.
            resp = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert resp.startswith(b"HTTP/1.1 403") and b"host not in allow list" in resp
            (line,) = decisions(lines(audit))
            assert line["decision"] == "deny"

    asyncio.run(go())


def test_allow_line_is_written_before_the_payload_leaves_and_end_line_at_shutdown(tmp_path: Path) -> None:
    got = asyncio.Event()

    async def holding(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(7)
        got.set()
        try:
            await asyncio.sleep(30)  # holds the connection: never answers
        finally:
            writer.close()

    async def go() -> None:
        async with (
            upstream(holding) as up,
            guard_on(tmp_path, [{"host": "127.0.0.1", "ports": [up], "private": True}]) as (
                guard,
                port,
                audit,
            ),
        ):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"POST http://127.0.0.1:{up}/x HTTP/1.1\r\nContent-Length: 7\r\n\r\npayload".encode())
            await writer.drain()
            await asyncio.wait_for(got.wait(), 5)
            # The upstream holds the payload and has not answered: the decision is on record already.
            (line,) = decisions(lines(audit))
            assert line["decision"] == "allow" and line["path"] == "/x"
            assert ends(lines(audit)) == []
            await guard.close_connections()
            end = await wait_for_line(audit, lambda ln: ln.get("kind") == "end")
            assert end["conn"] == line["conn"] and end["reason"] == "guard stopping" and end["bytes_up"] > 7
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    asyncio.run(go())


def test_parallel_large_bodies_stream_in_bounded_memory(tmp_path: Path) -> None:
    size = 8 * 1024 * 1024
    received: list[int] = []

    async def slow_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        n = 0
        while chunk := await reader.read(65536):
            n += len(chunk)
            await asyncio.sleep(0)
        received.append(n)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def post(port: int, up: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST http://127.0.0.1:{up}/ HTTP/1.1\r\nContent-Length: {size}\r\n\r\n".encode())
        block = b"x" * 65536
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()
        resp = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        return resp

    async def go() -> None:
        async with (
            upstream(slow_sink) as up,
            guard_on(tmp_path, [{"host": "127.0.0.1", "ports": [up], "private": True}]) as (
                _,
                port,
                _,
            ),
        ):
            tracemalloc.start()
            try:
                results = await asyncio.gather(*(post(port, up) for _ in range(4)))
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert all(r.startswith(b"HTTP/1.1 200") for r in results)
            assert received == [size] * 4
            # 32 MiB went through; the guard (and this test's clients) never held more than a few pieces.
            assert peak < 6 * 1024 * 1024, peak

    asyncio.run(go())


def test_a_secret_late_in_a_streamed_body_never_reaches_the_upstream(tmp_path: Path) -> None:
    seen = bytearray()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while chunk := await reader.read(65536):
                seen.extend(chunk)
        writer.close()

    async def go() -> None:
        async with (
            upstream(sink) as up,
            guard_on(tmp_path, [{"host": "127.0.0.1", "ports": [up], "private": True}]) as (
                _,
                port,
                audit,
            ),
        ):
            body = b"a" * (3 * proxy.CHUNK + 17) + HONEY.encode() + b"b" * 100
            resp = await send(
                port, f"POST http://127.0.0.1:{up}/ HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
            )
            assert resp.startswith(b"HTTP/1.1 403") and b"dlp:honeytoken" in resp
            await wait_for_line(audit, lambda ln: ln.get("reason") == "dlp:honeytoken")
            assert [d["decision"] for d in decisions(lines(audit))] == ["allow", "deny"]
        assert HONEY.encode() not in seen and HONEY[:10].encode() not in seen
        assert len(seen) > 2 * proxy.CHUNK  # it was streaming: the pieces before the secret went out

    asyncio.run(go())


def test_at_capacity_a_new_connection_is_refused_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy, "MAX_CONNECTIONS", 2)

    async def go() -> None:
        async with guard_on(tmp_path, []) as (guard, port, audit):
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            for _ in range(100):
                if guard.connections == 2:
                    break
                await asyncio.sleep(0.01)
            resp = await send(port, b"GET /__bottle/health HTTP/1.1\r\n\r\n")
            assert resp.startswith(b"HTTP/1.1 503") and b"at capacity" in resp
            for _, w in idle:
                w.close()
                with contextlib.suppress(ConnectionError):
                    await w.wait_closed()
            guard.audit.flush_summaries()
            (summary,) = [ln for ln in lines(audit) if ln["kind"] == "summary"]
            assert summary["counts"] == [{"decision": "deny", "reason": "guard at capacity", "count": 1}]

    asyncio.run(go())


# -- 5: a decision the log cannot record is not made ---------------------------------------------
@pytest.mark.parametrize("failure", ["write", "low"])
def test_an_allow_the_audit_cannot_record_is_refused(tmp_path: Path, failure: str) -> None:
    contacted = asyncio.Event()

    async def noted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        contacted.set()
        writer.close()

    class Failing(AuditLog):
        def write_raw(self, data: bytes) -> bool:
            if failure == "write" and b'"allow"' in data:
                self.failed = True
                return False
            return super().write_raw(data)

    async def go() -> None:
        log = Failing(tmp_path / "egress.jsonl", bottle="t")
        if failure == "low":
            log.low = True
            log._retried = time.monotonic() + 3600
        async with (
            upstream(noted) as up,
            guard_on(tmp_path, [{"host": "127.0.0.1", "ports": [up], "private": True}], audit=log) as (_, port, _),
        ):
            resp = await send(port, f"GET http://127.0.0.1:{up}/ HTTP/1.1\r\n\r\n".encode())
            assert resp.startswith(b"HTTP/1.1 503") and b"audit log cannot record" in resp
            # Known before connecting (low): the upstream is never contacted; found at the write: no request
            # byte has left (the sink would have seen them after the connect).
            assert not contacted.is_set() or failure == "write"

    asyncio.run(go())


def test_audit_log_recovers_when_space_comes_back(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl", bottle="t")
    log.low = True
    log._retried = 0.0
    assert log.can_record()  # the reserve could be extended again
    log.close()


# -- 8: nothing is relayed before the tunnel's first bytes are judged -----------------------------
@pytest.mark.parametrize(
    ("buf", "host", "eof", "verdict", "detail"),
    [
        (b"\x16\x03GET / HTTP/1.1\r\nHost: evil\r\n\r\n", "a.example", True, "deny", "incomplete-client-hello"),
        (b"\x16\x03", "a.example", False, NEED, None),
        (b"", "a.example", True, "deny", "tunnel-closed-before-first-bytes"),
        (b"SSH-2.0-Open", "a.example", False, NEED, None),
        (b"SSH-2.0-Open", "a.example", True, "deny", "incomplete-ssh-banner"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "a.example", False, "allow", None),
        (b"SSH-2.0-x\x1b[2J\r\n", "a.example", False, "deny", "bad-ssh-banner"),
        (b"SSH-2.0-" + b"x" * 300, "a.example", False, "deny", "incomplete-ssh-banner"),
    ],
)
def test_judge_tunnel(buf: bytes, host: str, eof: bool, verdict: object, detail: str | None) -> None:
    assert judge_tunnel(buf, host, eof=eof) == (verdict, detail)


def test_a_client_hello_without_sni_is_only_for_ip_hosts() -> None:
    hello = client_hello("a.example")
    # Strip the server_name extension by asking for a hello to an IP literal (Python sends no SNI then).
    bare = client_hello("127.0.0.1")
    assert judge_tunnel(hello, "a.example") == ("allow", "a.example")
    assert judge_tunnel(bare, "a.example") == ("deny", "no-sni")
    assert judge_tunnel(bare, "127.0.0.1") == ("allow", None)


def test_a_half_closed_partial_record_relays_nothing(tmp_path: Path) -> None:
    seen = bytearray()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while chunk := await reader.read(65536):
                seen.extend(chunk)
        writer.close()

    async def go() -> None:
        async with (
            upstream(sink) as up,
            guard_on(tmp_path, [{"host": "127.0.0.1", "ports": [up], "private": True}]) as (
                _,
                port,
                audit,
            ),
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"CONNECT 127.0.0.1:{up} HTTP/1.1\r\n\r\n".encode())
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            writer.write(b"\x16\x03GET / HTTP/1.1\r\nHost: forbidden.test\r\n\r\n")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            line = await wait_for_line(audit, lambda ln: ln.get("decision") == "deny")
            assert line["reason"] == "incomplete-client-hello"
            assert [d["decision"] for d in decisions(lines(audit))] == ["deny"]
        assert bytes(seen) == b""

    asyncio.run(go())


# -- 9: redact the secret, not the record; budgets that never let an allow go unrecorded ---------
def test_redaction_keeps_the_record() -> None:
    s = Scanner(honeytokens=[HONEY])
    segment = "Zx8QmP2vR7tK9wL4nB6yH3jD5fG1sA0c"  # high-entropy, 32 chars: a normal path segment
    assert s.redact(f"/v1/files/{segment}/content") == f"/v1/files/{segment}/content"
    many = "&".join(f"k{i}={HONEY}" for i in range(100))
    red = s.redact(many)
    assert HONEY not in red and red.count("[REDACTED:honeytoken]") == 100
    assert s.redact("request body over 32 MiB") == "request body over 32 MiB"
    assert s.redact_host(f"{segment.lower()}.evil.test") == "[REDACTED:encoded-hostname].evil.test"


def test_path_and_query_are_logged_and_reasons_are_not_redacted(tmp_path: Path) -> None:
    async def go() -> None:
        async with guard_on(tmp_path, []) as (_, port, audit):
            await send(
                port,
                b"GET http://forbidden.test/v1/Zx8QmP2vR7tK9wL4nB6yH3jD5fG1sA0c?q=1&k="
                + HONEY.encode()
                + b" HTTP/1.1\r\n\r\n",
            )
            await send(port, b"POST http://forbidden.test/ HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n")
            first, second = decisions(lines(audit))
            assert first["path"] == "/v1/Zx8QmP2vR7tK9wL4nB6yH3jD5fG1sA0c"
            assert first["query"] == "q=1&k=[REDACTED:honeytoken]" and first["reason"] == "dlp:honeytoken"
            assert second["reason"] == "request body over 32 MiB"

    asyncio.run(go())


def test_a_refusal_flood_is_summarised_and_an_allow_over_budget_is_refused(tmp_path: Path) -> None:
    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def go() -> None:
        log = AuditLog(tmp_path / "egress.jsonl", bottle="t", rate=100, burst=4000)
        async with (
            upstream(ok) as up,
            guard_on(tmp_path, [{"host": "127.0.0.1", "ports": [up], "private": True}], audit=log) as (_, port, audit),
        ):
            for _ in range(60):
                await send(port, b"GET http://forbidden.test/ HTTP/1.1\r\n\r\n")
            resp = await send(port, f"GET http://127.0.0.1:{up}/ HTTP/1.1\r\n\r\n".encode())
            assert resp.startswith(b"HTTP/1.1 503") and b"audit budget" in resp
            size = audit.stat().st_size
            assert size <= 4000 + 100 * 5  # the burst, plus what refilled while this ran
            log.flush_summaries()
            (summary,) = [ln for ln in lines(audit) if ln["kind"] == "summary"]
            assert summary["suppressed"] == 60 + 1 - len(decisions(lines(audit)))
            assert not [d for d in decisions(lines(audit)) if d["decision"] == "allow"]

    asyncio.run(go())


# -- 13: DNS work and lines are bounded ---------------------------------------------------------
def test_dns_query_flood_is_dropped_past_the_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [5000.25]  # the server's clock, moved by the test: no second boundary falls inside the flood
    monkeypatch.setattr(dns_module.time, "monotonic", lambda: now[0])
    log = AuditLog(tmp_path / "egress.jsonl", bottle="t")
    server = DnsServer(log, dict, Scanner)
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x04test\x00\x00\x01\x00\x01"
    answered = sum(server.handle(q, "10.0.0.3") is not None for _ in range(DnsServer.QUERIES_PER_SECOND + 50))
    assert answered == DnsServer.QUERIES_PER_SECOND
    now[0] += 0.7  # the same second still: nothing more
    assert server.handle(q, "10.0.0.3") is None
    now[0] += 0.1  # the next second: answered again
    assert server.handle(q, "10.0.0.3") is not None
    log.flush_summaries()
    log.close()
    text = (tmp_path / "egress.jsonl").read_text()
    assert "query flood: dropped" in text


def test_an_upstream_reset_ends_the_tunnel_for_the_client_too(tmp_path: Path) -> None:
    """The upstream sends, then resets (closes with the client's bytes unread): the client's side must end
    as well, and the connection's closing line be written, never a tunnel left hanging."""
    import socket as socket_mod

    async def resetting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        await asyncio.sleep(0.2)  # the client's greeting arrives and is left unread
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket_mod.SOL_SOCKET, socket_mod.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.close()

    async def go() -> None:
        async with (
            upstream(resetting) as up,
            guard_on(tmp_path, [{"host": "127.0.0.1", "ports": [up], "private": True}]) as (
                _,
                port,
                audit,
            ),
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"CONNECT 127.0.0.1:{up} HTTP/1.1\r\n\r\n".encode())
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            writer.write(b"SSH-2.0-client\r\n")
            await writer.drain()
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(reader.read(), 5)  # ends (EOF or reset), never hangs
            end = await wait_for_line(audit, lambda ln: ln.get("kind") == "end")
            assert end["bytes_up"] == len(b"SSH-2.0-client\r\n")
            writer.close()

    asyncio.run(go())
