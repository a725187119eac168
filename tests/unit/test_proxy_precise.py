"""The proxy's exact behaviour: every refusal's status and reason, what the upstream receives byte for byte
(request line, Host, headers), what the client gets back, and every field of the audit line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.guard.audit import AuditLog
from claude_bottle.guard.config import Route, Secrets
from claude_bottle.guard.dlp import Scanner
from claude_bottle.guard.http import Refused, _number, body_framing, parse_head, split_host_port
from claude_bottle.guard.policy import PolicyFile
from claude_bottle.guard.proxy import Guard
from claude_bottle.guard.tunnel import MAX_FIRST_BYTES, MAX_SSH_BANNER, NEED, judge_tunnel

from .guardkit import decisions, ends, send

KEY = "sk-ant-api03-PRECISEKEY-" + "p" * 30


# -- parsing, exactly -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        (b"GET http://a.test/", 400, "malformed request line"),
        (b"GET  http://a.test/ HTTP/1.1", 400, "malformed request line"),
        (b"BREW http://a.test/ HTTP/1.1", 400, "unsupported method"),
        (b"GET http://a.test/\x7f HTTP/1.1", 400, "malformed request target"),
        (b"GET http://a.test/ HTTP/2.0", 400, "only HTTP/1.x is proxied"),
        (b"GET http://a.test/ http/1.1", 400, "only HTTP/1.x is proxied"),
        (b"GET http://a.test/ HTTP/1.1\r\nNo-Colon", 400, "malformed header"),
        (b"GET http://a.test/ HTTP/1.1\r\nX: a\x01b", 400, "malformed header"),
    ],
)
def test_parse_head_refusals(raw: bytes, status: int, reason: str) -> None:
    with pytest.raises(Refused) as exc:
        parse_head(raw)
    assert (exc.value.status, exc.value.reason) == (status, reason)


def test_parse_head_keeps_what_it_read() -> None:
    req = parse_head(b"POST http://a.test/p HTTP/1.0\r\nX-A:  spaced \t\r\nX-B:\r\nx-a: two")
    assert (req.method, req.target, req.version) == ("POST", "http://a.test/p", "HTTP/1.0")
    assert req.headers == [("X-A", "spaced"), ("X-B", ""), ("x-a", "two")]
    assert req.all("X-A") == ["spaced", "two"]
    with pytest.raises(Refused, match="repeated x-a header"):
        req.header("x-a")
    assert req.header("x-b") == "" and req.header("absent") is None


@pytest.mark.parametrize(
    ("authority", "default", "expected"),
    [
        ("a.test", 443, ("a.test", 443)),
        ("a.test:8080", 443, ("a.test", 8080)),
        ("A.Test.", 80, ("a.test", 80)),
        ("[::1]", 443, ("::1", 443)),
        ("[::1]:8443", 443, ("::1", 8443)),
        ("[2001:db8::1]:1", 80, ("2001:db8::1", 1)),
        ("a.test:65535", 80, ("a.test", 65535)),
    ],
)
def test_split_host_port(authority: str, default: int, expected: tuple[str, int]) -> None:
    assert split_host_port(authority, default) == expected


@pytest.mark.parametrize(
    ("authority", "reason"),
    [
        ("u@a.test", "userinfo in the authority is not allowed"),
        ("[::1", "bad IPv6 literal"),
        ("[::1]x", "bad authority"),
        ("::1", "IPv6 literals need brackets"),
        ("a.test:0", "bad port"),
        ("a.test:65536", "bad port"),
        ("a.test:+80", "bad port"),
        ("a.test:", "bad port"),
        (":80", "bad host"),
        ("[nothost]", "bad host"),
    ],
)
def test_split_host_port_refusals(authority: str, reason: str) -> None:
    with pytest.raises(Refused) as exc:
        split_host_port(authority, 443)
    assert (exc.value.status, exc.value.reason) == (400, reason)


@pytest.mark.parametrize(
    ("text", "base", "value"),
    [
        ("0", 10, 0),
        ("1234567890123456", 10, 1234567890123456),  # 16 digits: the most
        ("12345678901234567", 10, None),
        ("ff", 16, 255),
        ("FF", 16, 255),
        ("ff", 10, None),
        ("g", 16, None),
        ("", 10, None),
        ("1_0", 10, None),
    ],
)
def test_number(text: str, base: int, value: int | None) -> None:
    assert _number(text, base) == value


def test_body_framing_values() -> None:
    def framing(headers: list[tuple[str, str]]) -> tuple[str, int]:
        f = body_framing(parse_head(b"POST http://a.test/ HTTP/1.1"))
        req = parse_head(b"POST http://a.test/ HTTP/1.1")
        req.headers = headers
        f = body_framing(req)
        return f.kind, f.length

    assert framing([]) == ("none", 0)
    assert framing([("Content-Length", "0")]) == ("none", 0)
    assert framing([("Content-Length", "12")]) == ("length", 12)
    assert framing([("Transfer-Encoding", "Chunked")]) == ("chunked", 0)


@pytest.mark.parametrize(
    ("buf", "eof", "expected"),
    [
        (b"", False, (NEED, None)),
        (b"SSH-2.0-", False, (NEED, None)),  # the prefix whole, no line end yet
        (b"SSH-2.0", True, ("deny", "incomplete-ssh-banner")),
        (b"SSH-2.0-x\n", False, ("allow", None)),
        (b"SSH-2.0-x\r\nmore after the banner", False, ("allow", None)),
        (b"SSH-2.0-\x7f\r\n", False, ("deny", "bad-ssh-banner")),
        (b"SSH-2.0-~ok\r\n", False, ("allow", None)),
        (b"SSH-2.0-a b\r\n", False, ("allow", None)),
        (b"SSH-2.0-" + b"x" * (MAX_SSH_BANNER - 10) + b"\r\n", False, ("allow", None)),  # exactly the limit
        (b"SSH-2.0-" + b"x" * (MAX_SSH_BANNER - 9) + b"\r\n", False, ("deny", "bad-ssh-banner")),
        (b"SSH-1.99-old\r\n", False, ("deny", "tunnel-not-tls")),
        (b"\x16\x03\x01\xff\xff", False, ("deny", "bad-client-hello")),
        (b"\x16" + b"\x00" * (MAX_FIRST_BYTES - 1), False, ("deny", "bad-client-hello")),
    ],
)
def test_judge_tunnel_exactly(buf: bytes, eof: bool, expected: tuple[object, str | None]) -> None:
    assert judge_tunnel(buf, "a.test", eof=eof) == expected


def test_a_growing_client_hello_waits_up_to_one_record() -> None:
    # A record header promising the largest record: every prefix short of MAX_FIRST_BYTES waits.
    head = b"\x16\x03\x01" + (16384).to_bytes(2, "big")
    assert judge_tunnel(head + b"\x01", "a.test") == (NEED, None)
    assert judge_tunnel(head + b"\x01", "a.test", eof=True) == ("deny", "incomplete-client-hello")


# -- through the guard ----------------------------------------------------------------------------------
class Recorder:
    """An upstream that records each request and answers with a scripted response."""

    def __init__(self, response: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") -> None:
        self.response = response
        self.seen: list[bytes] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = bytearray()
        with contextlib.suppress(Exception):
            data += await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            while chunk := await asyncio.wait_for(reader.read(65536), 0.3):
                data += chunk
        self.seen.append(bytes(data))
        writer.write(self.response)
        with contextlib.suppress(Exception):
            await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def setup(
    tmp: Path, rec: Recorder, host: str = "127.0.0.1", *, route: bool = False
) -> AsyncIterator[tuple[int, int, Path]]:
    up = await asyncio.start_server(rec, host, 0)
    up_port = up.sockets[0].getsockname()[1]
    (tmp / "policy.json").write_text(
        json.dumps({"bottle": "t-abcde", "allow": [{"host": host, "ports": [up_port], "private": True}]})
    )
    routes = {}
    if route:
        routes["anthropic"] = Route("anthropic", f"http://{host}:{up_port}/base", "x-api-key", KEY, KEY)
    log = AuditLog(tmp / "egress.jsonl", bottle="t-abcde")
    guard = Guard(PolicyFile(tmp / "policy.json"), log, Secrets(routes, (), Scanner(secrets=[KEY])))
    server = await guard.serve("127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], up_port, tmp / "egress.jsonl"
    finally:
        server.close()
        await guard.close_connections()
        await server.wait_closed()
        up.close()
        await up.wait_closed()
        log.close()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_plain_request_reaches_the_upstream_exactly(tmp_path: Path) -> None:
    rec = Recorder()

    async def go() -> None:
        async with setup(tmp_path, rec) as (port, up, audit):
            resp = await send(
                port,
                f"GET http://127.0.0.1:{up}?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{up}\r\nUser-Agent: t\r\n"
                "Proxy-Connection: keep-alive\r\nConnection: keep-alive\r\n\r\n".encode(),
            )
            assert resp.endswith(b"\r\n\r\nok")
            (line,) = decisions(lines(audit))
            assert {k: line[k] for k in ("kind", "method", "host", "port", "path", "query", "addr", "reason")} == {
                "kind": "http", "method": "GET", "host": "127.0.0.1", "port": up, "path": "/", "query": "x=1",
                "addr": "127.0.0.1", "reason": "allowed by rule 127.0.0.1",
            }  # fmt: skip

    asyncio.run(go())
    (req,) = rec.seen
    assert (
        req
        == f"GET /?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{up_of(rec)}\r\nUser-Agent: t\r\nConnection: close\r\n\r\n".encode()
    )


def up_of(rec: Recorder) -> str:
    return rec.seen[0].split(b"\r\n")[1].split(b":")[-1].decode()


def test_a_post_carries_its_length_and_nothing_pipelined(tmp_path: Path) -> None:
    rec = Recorder()

    async def go() -> None:
        async with setup(tmp_path, rec) as (port, up, audit):
            raw = (
                f"POST http://127.0.0.1:{up}/p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                f"GET http://127.0.0.1:{up}/second HTTP/1.1\r\n\r\n"
            )
            await send(port, raw.encode())
            await send(port, f"POST http://127.0.0.1:{up}/empty HTTP/1.1\r\n\r\n".encode())
            assert [d["path"] for d in decisions(lines(audit))] == ["/p", "/empty"]

    asyncio.run(go())
    first, empty = rec.seen
    assert first.endswith(b"Content-Length: 3\r\nConnection: close\r\n\r\nabc")  # the second request never went
    assert b"Content-Length: 0\r\n" in empty


def test_a_host_header_with_the_same_host_on_the_same_port_passes(tmp_path: Path) -> None:
    rec = Recorder()

    async def go() -> None:
        async with setup(tmp_path, rec) as (port, up, audit):
            ok = await send(port, f"GET http://127.0.0.1:{up}/ HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode())
            assert ok.startswith(b"HTTP/1.1 200")
            bad = await send(port, f"GET http://127.0.0.1:{up}/ HTTP/1.1\r\nHost: 127.0.0.2:{up}\r\n\r\n".encode())
            assert bad.startswith(b"HTTP/1.1 403 Forbidden") and b"X-Claude-Bottle-Reason: host-header-mismatch" in bad
            line = decisions(lines(audit))[-1]
            assert (line["host_header"], line["reason"]) == (f"127.0.0.2:{up}", "host-header-mismatch")

    asyncio.run(go())


NOT_PROXY = "not a proxy request or credential route"
NOT_LISTED = "host not in allow list"
REFUSALS = [
    (b"GET /nowhere?a=b HTTP/1.1\r\n\r\n", 404, NOT_PROXY, {"kind": "local", "path": "/nowhere", "query": "a=b"}),
    (b"GET /nowhere HTTP/1.1\r\n\r\n", 404, NOT_PROXY, {"kind": "local", "path": "/nowhere"}),
    (
        b"GET ftp://a.test/ HTTP/1.1\r\n\r\n",
        400,
        "only http:// absolute URIs and CONNECT are proxied",
        {"kind": "http"},
    ),
    (b"CONNECT a.test HTTP/1.1\r\n\r\n", 403, NOT_LISTED, {"kind": "connect", "host": "a.test", "port": 443}),
    (b"GET http://a.test/x HTTP/1.1\r\n\r\n", 403, NOT_LISTED, {"kind": "http", "port": 80, "path": "/x"}),
    (b"GET http://no-such-host.invalid:1/ HTTP/1.1\r\n\r\n", 403, NOT_LISTED, {"port": 1}),
]


@pytest.mark.parametrize(("raw", "status", "reason", "fields"), REFUSALS)
def test_refusals_answer_and_record_exactly(
    tmp_path: Path, raw: bytes, status: int, reason: str, fields: dict[str, Any]
) -> None:
    async def go() -> None:
        async with setup(tmp_path, Recorder()) as (port, _up, audit):
            resp = await send(port, raw)
            head, _, body = resp.partition(b"\r\n\r\n")
            assert head.split(b"\r\n")[0].startswith(f"HTTP/1.1 {status} ".encode())
            assert f"X-Claude-Bottle-Reason: {reason}".encode() in head and b"Content-Type: text/plain" in head
            assert body == f"claude-bottle egress guard: {reason}\n".encode()
            (line,) = decisions(lines(audit))
            assert line["decision"] == "deny" and line["reason"] == reason
            for k, v in fields.items():
                assert line[k] == v, k
            assert "query" not in line or "query" in fields

    asyncio.run(go())


def test_health_is_exact(tmp_path: Path) -> None:
    async def go() -> None:
        async with setup(tmp_path, Recorder()) as (port, _up, audit):
            resp = await send(port, b"GET /__bottle/health HTTP/1.1\r\n\r\n")
            head, _, body = resp.partition(b"\r\n\r\n")
            assert head.split(b"\r\n") == [
                b"HTTP/1.1 200 OK", b"Content-Type: application/json", f"Content-Length: {len(body)}".encode(),
                b"Connection: close",
            ]  # fmt: skip
            assert json.loads(body) == {"status": "ok", "bottle": "t-abcde"} and body.endswith(b"\n")
            assert lines(audit) == []

    asyncio.run(go())


def test_upstream_failures_are_502_with_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once this socket is gone

    async def no_such_name(self: Any, host: str, port: int, **_: Any) -> list[Any]:
        raise OSError("no such name")

    async def go() -> None:
        (tmp_path / "policy.json").write_text(json.dumps({"allow": [
            {"host": "127.0.0.1", "ports": [closed], "private": True}, {"host": "gone.test", "ports": [80]},
        ]}))  # fmt: skip
        log = AuditLog(tmp_path / "egress.jsonl", bottle="t")
        guard = Guard(PolicyFile(tmp_path / "policy.json"), log)
        server = await guard.serve("127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        refused = await send(port, f"GET http://127.0.0.1:{closed}/ HTTP/1.1\r\n\r\n".encode())
        assert refused.startswith(b"HTTP/1.1 502 Bad Gateway")
        assert b"cannot connect upstream (ConnectionRefusedError)" in refused
        monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", no_such_name)
        unresolved = await send(port, b"GET http://gone.test/ HTTP/1.1\r\n\r\n")
        assert unresolved.startswith(b"HTTP/1.1 502") and b"cannot resolve the host" in unresolved
        server.close()
        await server.wait_closed()
        log.close()
        assert [d["reason"] for d in decisions(lines(tmp_path / "egress.jsonl"))] == [
            "cannot connect upstream (ConnectionRefusedError)", "cannot resolve the host",
        ]  # fmt: skip

    asyncio.run(go())


# -- credential routes ------------------------------------------------------------------------------------
def test_a_route_request_and_response_exactly(tmp_path: Path) -> None:
    rec = Recorder(
        b"HTTP/1.1 201 Created\r\nConnection: keep-alive\r\nKEEP-ALIVE: timeout=5\r\nX-Up: 1\r\n"
        b"Content-Length: 4\r\n\r\ndone"
    )

    async def go() -> None:
        async with setup(tmp_path, rec, route=True) as (port, up, audit):
            resp = await send(
                port,
                b"POST /anthropic/v1/messages?beta=true HTTP/1.1\r\nHost: egress:3128\r\nx-api-key: placeholder\r\n"
                b"Authorization: Bearer placeholder\r\nAnthropic-Version: 2023-06-01\r\nContent-Length: 2\r\n\r\n{}",
            )
            assert resp == b"HTTP/1.1 201 Created\r\nX-Up: 1\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndone"
            got = lines(audit)
            (line,) = decisions(got)
            assert {k: line[k] for k in ("kind", "route", "host", "port", "path", "query", "reason")} == {
                "kind": "route", "route": "anthropic", "host": "127.0.0.1", "port": up, "path": "/v1/messages",
                "query": "beta=true", "reason": "credential route anthropic",
            }  # fmt: skip
            (end,) = ends(got)
            assert (end["status"], end["bytes_down"]) == (201, 4)

    asyncio.run(go())
    (req,) = rec.seen
    head, _, body = req.partition(b"\r\n\r\n")
    up = head.split(b"\r\n")[1].removeprefix(b"Host: ")
    assert head.split(b"\r\n") == [
        b"POST /base/v1/messages?beta=true HTTP/1.1", b"Host: " + up, b"Anthropic-Version: 2023-06-01",
        f"x-api-key: {KEY}".encode(), b"Content-Length: 2", b"Connection: close",
    ]  # fmt: skip
    assert up.startswith(b"127.0.0.1:") and body == b"{}"


@pytest.mark.parametrize(
    ("response", "reason", "status"),
    [
        (b"", "upstream anthropic sent no response (IncompleteReadError)", None),
        (b"HTTP/1.1 OK-ish\r\n\r\n", None, 0),  # a status line without a number: logged as 0
    ],
)
def test_route_response_edges(tmp_path: Path, response: bytes, reason: str | None, status: int | None) -> None:
    rec = Recorder(response)

    async def go() -> None:
        async with setup(tmp_path, rec, route=True) as (port, _up, audit):
            resp = await send(port, b"GET /anthropic/x HTTP/1.1\r\n\r\n")
            got = lines(audit)
            if reason:
                assert resp.startswith(b"HTTP/1.1 502") and reason.encode() in resp
                assert decisions(got)[-1]["reason"] == reason
            else:
                assert ends(got)[0]["status"] == status

    asyncio.run(go())


def test_a_secret_in_a_route_header_other_than_the_credential_is_refused(tmp_path: Path) -> None:
    rec = Recorder()

    async def go() -> None:
        async with setup(tmp_path, rec, route=True) as (port, _up, audit):
            resp = await send(port, f"GET /anthropic/x HTTP/1.1\r\nX-Leak: {KEY}\r\n\r\n".encode())
            assert resp.startswith(b"HTTP/1.1 403") and b"dlp:credential" in resp
            # The placeholder credential headers are replaced, so they are not scanned: a key there is no leak.
            ok = await send(port, f"GET /anthropic/x HTTP/1.1\r\nx-api-key: {KEY}\r\n\r\n".encode())
            assert ok.startswith(b"HTTP/1.1 200")
            assert [d["decision"] for d in decisions(lines(audit))] == ["deny", "allow"]

    asyncio.run(go())
    assert len(rec.seen) == 1


@pytest.mark.parametrize("how", ["reset", "close"])
def test_an_upstream_that_breaks_before_answering_gets_the_client_a_502(tmp_path: Path, how: str) -> None:
    class Breaker(Recorder):
        async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            if how == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()

    async def go() -> None:
        async with setup(tmp_path, Breaker()) as (port, up, audit):
            resp = await send(port, f"GET http://127.0.0.1:{up}/ HTTP/1.1\r\nHost: 127.0.0.1:{up}\r\n\r\n".encode())
            assert resp.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), resp
            assert b"X-Claude-Bottle-Reason: upstream closed without answering\r\n" in resp
            end = [ln for ln in lines(audit) if ln.get("kind") == "end"]
            assert len(end) == 1 and end[0]["status"] == 502 and end[0]["bytes_down"] == 0

    asyncio.run(go())
