"""The guard's hostile-input and limit paths (issue 10): framing, limits, timeouts (constants patched, not
waited out), fail-closed on an internal error, DNS over TCP, rebinding, and a credential route to an
HTTPS upstream with a test CA (the production path to the real API)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.guard import policy as policy_mod
from claude_bottle.guard import proxy
from claude_bottle.guard.audit import AuditLog
from claude_bottle.guard.config import Route, Secrets
from claude_bottle.guard.dlp import Scanner
from claude_bottle.guard.dns import DnsServer
from claude_bottle.guard.policy import PolicyFile
from claude_bottle.guard.proxy import Guard

from .guardkit import decisions, ends, send

KEY = "sk-ant-api03-REALKEY-" + "z" * 40


@contextlib.asynccontextmanager
async def sink(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[tuple[int, list[bytes]]]:
    """An upstream that records everything each connection sends, then answers 200."""
    got: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = bytearray()
        with contextlib.suppress(Exception):
            data += await reader.readuntil(b"\r\n\r\n")
            while chunk := await asyncio.wait_for(reader.read(65536), 0.5):
                data += chunk
        got.append(bytes(data))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        with contextlib.suppress(Exception):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, host, port)
    try:
        yield server.sockets[0].getsockname()[1], got
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


@contextlib.asynccontextmanager
async def guard(
    tmp: Path, allow: list[dict[str, Any]], secrets: Secrets | None = None, cafile: str | None = None
) -> AsyncIterator[tuple[Guard, int, Path]]:
    (tmp / "policy.json").write_text(json.dumps({"bottle": "t-abcde", "allow": allow}))
    log = AuditLog(tmp / "egress.jsonl", bottle="t-abcde")
    g = Guard(PolicyFile(tmp / "policy.json"), log, secrets, cafile=cafile)
    server = await g.serve("127.0.0.1", 0)
    try:
        yield g, server.sockets[0].getsockname()[1], tmp / "egress.jsonl"
    finally:
        server.close()
        await g.close_connections()
        await server.wait_closed()
        log.close()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def allow_port(port: int) -> list[dict[str, Any]]:
    return [{"host": "127.0.0.1", "ports": [port], "private": True}]


# -- framing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "body", "status", "reason"),
    [
        (
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
            400,
            "both Content-Length and Transfer-Encoding",
        ),
        ("Transfer-Encoding: gzip\r\n", "", 400, "unsupported Transfer-Encoding"),
        ("Transfer-Encoding: gzip, chunked\r\n", "", 400, "unsupported Transfer-Encoding"),
        ("Transfer-Encoding: chunked, chunked\r\n", "", 400, "unsupported Transfer-Encoding"),
        ("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "", 400, "repeated transfer-encoding header"),
        ("Content-Length: 1\r\nContent-Length: 1\r\n", "x", 400, "repeated content-length header"),
        ("Content-Length: +1\r\n", "x", 400, "bad Content-Length"),
        ("Content-Length: 33554433\r\n", "", 413, "request body over 32 MiB"),
        ("Transfer-Encoding: chunked\r\n", "3\r\nabcXX0\r\n\r\n", 400, "bad chunk framing"),
        ("Transfer-Encoding: chunked\r\n", "zz\r\n", 400, "bad chunk size"),
        ("Transfer-Encoding: chunked\r\n", "2000001\r\n", 413, "request body over 32 MiB"),
    ],
)
def test_body_framing_is_judged_strictly(tmp_path: Path, headers: str, body: str, status: int, reason: str) -> None:
    async def go() -> None:
        async with sink() as (up, got), guard(tmp_path, allow_port(up)) as (_, port, audit):
            resp = await send(port, f"POST http://127.0.0.1:{up}/ HTTP/1.1\r\n{headers}\r\n{body}".encode())
            assert resp.startswith(f"HTTP/1.1 {status}".encode()), resp
            assert reason.encode() in resp
            assert decisions(lines(audit))[-1]["reason"] == reason
            # Nothing but (at most) the head of the refused request reached the upstream, never its body.
            assert all(b"abc" not in g.split(b"\r\n\r\n", 1)[-1] for g in got)

    asyncio.run(go())


def test_a_chunked_body_is_forwarded_rechunked_and_trailers_dropped(tmp_path: Path) -> None:
    async def go() -> None:
        async with sink() as (up, got), guard(tmp_path, allow_port(up)) as (_, port, _):
            resp = await send(
                port,
                f"POST http://127.0.0.1:{up}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                "3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: secret-ish\r\n\r\n".encode(),
            )
            assert resp.startswith(b"HTTP/1.1 200")
            (req,) = got
            assert b"Transfer-Encoding: chunked" in req and b"X-Trailer" not in req
            assert req.endswith(b"5\r\nabcde\r\n0\r\n\r\n")

    asyncio.run(go())


def test_head_limit(tmp_path: Path) -> None:
    async def go() -> None:
        async with guard(tmp_path, []) as (_, port, audit):
            resp = await send(port, b"GET http://a.test/ HTTP/1.1\r\nX: " + b"a" * proxy.MAX_HEAD + b"\r\n\r\n")
            assert resp.startswith(b"HTTP/1.1 431")
            assert decisions(lines(audit))[-1]["reason"] == "request head too large"

    asyncio.run(go())


# -- timeouts (patched) -------------------------------------------------------------------------------
def test_a_body_too_slow_is_cut_and_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy, "BODY_TIMEOUT", 0.3)

    async def go() -> None:
        async with sink() as (up, _got), guard(tmp_path, allow_port(up)) as (_, port, audit):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"POST http://127.0.0.1:{up}/ HTTP/1.1\r\nContent-Length: 10\r\n\r\nab".encode())
            await writer.drain()
            resp = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert resp.startswith(b"HTTP/1.1 408") and b"request body too slow" in resp
            assert [d["decision"] for d in decisions(lines(audit))] == ["allow", "deny"]

    asyncio.run(go())


def test_tunnel_first_bytes_too_slow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy, "FIRST_BYTES_TIMEOUT", 0.3)

    async def go() -> None:
        async with sink() as (up, got), guard(tmp_path, allow_port(up)) as (_, port, audit):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"CONNECT 127.0.0.1:{up} HTTP/1.1\r\n\r\n".encode())
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            (line,) = decisions(lines(audit))
            assert (line["decision"], line["reason"]) == ("deny", "tunnel-first-bytes-too-slow")
        assert got == [b""]  # connected, nothing relayed

    asyncio.run(go())


def test_head_timeout_closes_without_a_decision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy, "HEAD_TIMEOUT", 0.2)

    async def go() -> None:
        async with guard(tmp_path, []) as (_, port, audit):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET http://a.test/ HTTP/1.1\r\n")
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            assert lines(audit) == []

    asyncio.run(go())


# -- fail closed --------------------------------------------------------------------------------------
def test_an_internal_error_fails_closed_on_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Guard, host: str, port: int) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Guard, "_decide", broken)

    async def go() -> None:
        async with sink() as (up, got), guard(tmp_path, allow_port(up)) as (_, port, audit):
            resp = await send(port, f"GET http://127.0.0.1:{up}/ HTTP/1.1\r\n\r\n".encode())
            assert not resp.startswith(b"HTTP/1.1 200")
            (line,) = decisions(lines(audit))
            assert (line["decision"], line["reason"]) == ("deny", "internal error")
        assert got == []

    asyncio.run(go())


# -- rebinding: the guard connects to the very address it checked ------------------------------------
def test_a_name_is_resolved_once_and_the_checked_address_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rebind.test answers a 'public' address first and a private one after: the guard must connect to
    the first (checked) one, never look the name up again. 127.0.0.2 stands for a public address here."""
    real = policy_mod.is_public_address
    monkeypatch.setattr(proxy, "is_public_address", lambda a: a == "127.0.0.2" or real(a))
    answers = iter(["127.0.0.2", "127.0.0.1", "127.0.0.1"])
    asked: list[str] = []

    async def getaddrinfo(self: Any, host: str, port: int, **_: Any) -> list[Any]:
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", getaddrinfo)

    async def go() -> None:
        # The same port on both addresses: a second lookup would land on the private one and be answered.
        async with (
            sink("127.0.0.2") as (up, checked_got),
            sink("127.0.0.1", up) as (_, rebound_got),
            guard(tmp_path, [{"host": "rebind.test", "ports": [up]}]) as (_, port, audit),
        ):
            resp = await send(port, f"GET http://rebind.test:{up}/x HTTP/1.1\r\n\r\n".encode())
            assert resp.startswith(b"HTTP/1.1 200"), resp
            (line,) = decisions(lines(audit))
            assert line["addr"] == "127.0.0.2"
        assert asked == ["rebind.test"] and len(checked_got) == 1 and rebound_got == []

    asyncio.run(go())


def test_a_name_resolving_to_a_private_address_is_refused_without_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def getaddrinfo(self: Any, host: str, port: int, **_: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", getaddrinfo)

    async def go() -> None:
        async with sink() as (up, got), guard(tmp_path, [{"host": "inside.test", "ports": [up]}]) as (_, port, audit):
            resp = await send(port, f"GET http://inside.test:{up}/ HTTP/1.1\r\n\r\n".encode())
            assert resp.startswith(b"HTTP/1.1 403") and b"ssrf" in resp
            (line,) = decisions(lines(audit))
            assert line["resolved"] == "127.0.0.1"
        assert got == []

    asyncio.run(go())


# -- DNS over TCP ----------------------------------------------------------------------------------------
def dns_query(name: str) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", 1, 1)


def test_dns_over_tcp_answers_audits_and_caps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DnsServer, "MAX_TCP", 1)

    async def go() -> None:
        log = AuditLog(tmp_path / "egress.jsonl", bottle="t")
        dns = DnsServer(log, lambda: {"egress": "10.0.0.14"}, Scanner)
        udp, tcp = await dns.serve("127.0.0.1", 0)
        port = tcp.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for name in ("egress", "example.com"):
                q = dns_query(name)
                writer.write(struct.pack("!H", len(q)) + q)
                size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))[0]
                reply = await reader.readexactly(size)
                assert reply[:2] == b"\x42\x42"
                assert reply[3] & 0x0F == (0 if name == "egress" else 3)
            # A second connection past the cap is closed at once.
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(r2.read(), 5) == b""
            w2.close()
            writer.close()
        finally:
            udp.close()
            tcp.close()
            await tcp.wait_closed()
            log.flush_summaries()
            log.close()
        got = lines(tmp_path / "egress.jsonl")
        assert [(ln["host"], ln["reason"]) for ln in got if ln["kind"] == "dns"] == [
            ("egress", "local name"),
            ("example.com", "nxdomain"),
        ]
        assert any(ln["kind"] == "summary" and ln["counts"][0]["reason"] == "tcp connection refused" for ln in got)

    asyncio.run(go())


# -- a credential route to an HTTPS upstream with a test CA -------------------------------------------
@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1, made with openssl for this run."""
    d = tmp_path_factory.mktemp("ca")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=claude-bottle test CA",
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.crt",
        "-days",
        "2",
        "-extfile",
        "ext",
    )
    return d / "ca.crt", d / "srv.crt", d / "srv.key"


def test_a_route_to_an_https_upstream_adds_the_key_over_verified_tls(
    tmp_path: Path, test_ca: tuple[Path, Path, Path]
) -> None:
    ca, crt, key = test_ca
    seen: list[bytes] = []

    async def api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
        seen.append(head + await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: hi\n\n")
        await writer.drain()
        writer.close()

    async def go(cafile: str | None) -> bytes:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(crt, key)
        server = await asyncio.start_server(api, "127.0.0.1", 0, ssl=ctx)
        up = server.sockets[0].getsockname()[1]
        secrets = Secrets(
            {"anthropic": Route("anthropic", f"https://127.0.0.1:{up}", "x-api-key", KEY, KEY)},
            (),
            Scanner(secrets=[KEY]),
        )
        try:
            async with guard(tmp_path, [], secrets, cafile=cafile) as (_, port, audit):
                resp = await send(
                    port,
                    b"POST /anthropic/v1/messages HTTP/1.1\r\nx-api-key: placeholder\r\nContent-Length: 2\r\n\r\n{}",
                )
                await asyncio.sleep(0)
                assert KEY not in audit.read_text()
                return resp
        finally:
            server.close()
            await server.wait_closed()

    resp = asyncio.run(go(str(ca)))
    assert resp.startswith(b"HTTP/1.1 200") and resp.endswith(b"data: hi\n\n")
    (req,) = seen
    assert f"x-api-key: {KEY}".encode() in req and b"placeholder" not in req
    # The control: without the test CA the upstream's certificate is refused; nothing is sent.
    seen.clear()
    resp = asyncio.run(go(None))
    assert resp.startswith(b"HTTP/1.1 502") and seen == []


# -- the guard's main: served, stopped, closing lines written -----------------------------------------
def test_the_guard_process_serves_and_records_open_connections_at_shutdown(tmp_path: Path) -> None:
    upstream = socket.create_server(("127.0.0.1", 0))
    up = upstream.getsockname()[1]
    (tmp_path / "policy.json").write_text(
        json.dumps({"bottle": "t-abcde", "allow": [{"host": "127.0.0.1", "ports": [up], "private": True}]})
    )
    ready = tmp_path / "ready"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [
        sys.executable,
        "-m",
        "claude_bottle.guard",
        "--policy",
        str(tmp_path / "policy.json"),
        "--audit",
        str(tmp_path / "egress.jsonl"),
        "--listen",
        f"127.0.0.1:{port}",
        "--dns",
        "127.0.0.1:0",
        "--guard-ip",
        "10.0.0.14",
        "--ready-file",
        str(ready),
        "--clients",
        "127.0.0.0/8",
    ]
    with upstream, subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        try:
            deadline = time.monotonic() + 20
            while not ready.exists():
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.02)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.sendall(b"GET http://forbidden.test/ HTTP/1.1\r\n\r\n")
                assert c.recv(100).startswith(b"HTTP/1.1 403")
            tunnel = socket.create_connection(("127.0.0.1", port), timeout=5)
            tunnel.sendall(f"CONNECT 127.0.0.1:{up} HTTP/1.1\r\n\r\n".encode())
            assert tunnel.recv(100).startswith(b"HTTP/1.1 200")
            tunnel.sendall(b"SSH-2.0-test\r\n")
            peer, _ = upstream.accept()
            assert peer.recv(100) == b"SSH-2.0-test\r\n"  # relayed: the tunnel is open
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            tunnel.close()
            peer.close()
        finally:
            if proc.poll() is None:
                proc.kill()
    got = lines(tmp_path / "egress.jsonl")
    assert [(ln["decision"], ln["host"]) for ln in decisions(got)] == [
        ("deny", "forbidden.test"),
        ("allow", "127.0.0.1"),
    ]
    (end,) = ends(got)
    assert end["reason"] == "guard stopping" and end["conn"] == decisions(got)[1]["conn"] and end["bytes_up"] == 14
    assert (tmp_path / "egress.jsonl").stat().st_blocks * 512 < 1024 * 1024  # the reserve given back


def test_serve_in_process_answers_proxy_and_dns_and_summarises_on_its_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from claude_bottle.guard import __main__ as guard_main

    monkeypatch.setattr(guard_main, "SUMMARY_INTERVAL", 0.05)
    (tmp_path / "policy.json").write_text(
        json.dumps({"bottle": "t-abcde", "allow": [], "local_names": {"db.bottle": "10.0.0.9"}})
    )
    (tmp_path / "secrets.json").write_text(json.dumps({"routes": {}, "honeytokens": ["AKIAHONEYTOKEN000042"]}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        dport = s.getsockname()[1]
    args = guard_main.parse_args([
        "--policy", str(tmp_path / "policy.json"), "--secrets", str(tmp_path / "secrets.json"),
        "--audit", str(tmp_path / "egress.jsonl"), "--listen", f"127.0.0.1:{port}", "--dns", f"127.0.0.1:{dport}",
        "--guard-ip", "10.0.0.14", "--ready-file", str(tmp_path / "ready"), "--clients", "10.9.9.9/32,127.0.0.0/8",
        "--cafile", str(tmp_path / "absent.crt"),
    ])  # fmt: skip
    summarised_by_the_timer = False

    async def go() -> None:
        nonlocal summarised_by_the_timer
        stop = asyncio.Event()
        task = asyncio.create_task(guard_main.serve(args, stop))
        for _ in range(500):
            if (tmp_path / "ready").exists():
                break
            await asyncio.sleep(0.01)
        assert (tmp_path / "ready").read_text() == "listening\n"
        health = await send(port, b"GET /__bottle/health HTTP/1.1\r\n\r\n")
        assert health.startswith(b"HTTP/1.1 200") and b'"bottle": "t-abcde"' in health
        # The honeytoken from the secrets file is known to the guard.
        resp = await send(port, b"GET http://a.test/?k=AKIAHONEYTOKEN000042 HTTP/1.1\r\n\r\n")
        assert b"dlp:honeytoken" in resp
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                answers.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", dport))
        for name, rcode in (("egress", 0), ("db.bottle", 0), ("x.example", 3)):
            transport.sendto(dns_query(name))
            reply = await asyncio.wait_for(answers.get(), 5)
            assert reply[3] & 0x0F == rcode, name
            if name == "egress":
                assert reply.endswith(bytes([10, 0, 0, 14]))
        for _ in range(200):  # a flood past the DNS budget ...
            transport.sendto(dns_query("flood.example"))
        transport.close()
        for _ in range(200):  # ... is summarised by the timer, without another query
            await asyncio.sleep(0.02)
            if '"kind":"summary"' in (tmp_path / "egress.jsonl").read_text():
                summarised_by_the_timer = True
                break
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(go())
    assert summarised_by_the_timer  # not only by the last flush at stop
    assert capsys.readouterr().out == f"claude-bottle guard listening on 127.0.0.1:{port}, dns on 127.0.0.1:{dport}\n"
    got = lines(tmp_path / "egress.jsonl")
    assert {ln.get("bottle") for ln in got} == {"t-abcde"}
    assert any(ln["kind"] == "summary" and ln["source"] == "dns" for ln in got)
    assert [ln["reason"] for ln in got if ln.get("kind") == "dns"][:3] == ["local name", "local name", "nxdomain"]
    assert "AKIAHONEYTOKEN000042" not in (tmp_path / "egress.jsonl").read_text()


def test_the_guards_arguments_and_addresses(capsys: pytest.CaptureFixture[str]) -> None:
    from claude_bottle.guard import __main__ as guard_main

    args = guard_main.parse_args(["--policy", "p.json"])
    assert (args.listen, args.secrets, args.audit, args.dns, args.clients, args.cafile) == (
        "0.0.0.0:3128", None, None, None, None, None,
    )  # fmt: skip
    with pytest.raises(SystemExit):
        guard_main.parse_args([])  # the policy is required
    assert "claude-bottle-guard: error: the following arguments are required: --policy" in capsys.readouterr().err
    assert guard_main._hostport("10.0.0.2:3128") == ("10.0.0.2", 3128)
    assert guard_main._hostport(":53") == ("127.0.0.1", 53)
    assert guard_main._hostport("::1:53") == ("::1", 53)


def test_serve_admits_only_its_clients_and_runs_without_optional_files(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """With only a policy (no secrets, audit file or DNS) the guard serves, decisions going to stdout; a
    client outside `--clients` is refused by the proxy and by DNS."""
    from claude_bottle.guard import __main__ as guard_main

    (tmp_path / "policy.json").write_text(json.dumps({"bottle": "t-abcde", "allow": []}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = guard_main.parse_args(["--policy", str(tmp_path / "policy.json"), "--listen", f"127.0.0.1:{port}",
                                  "--ready-file", str(tmp_path / "ready"), "--clients", "10.9.9.9/32"])  # fmt: skip

    async def go() -> bytes:
        stop = asyncio.Event()
        task = asyncio.create_task(guard_main.serve(args, stop))
        for _ in range(500):
            if (tmp_path / "ready").exists():
                break
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /__bottle/health HTTP/1.1\r\n\r\n")
        try:
            resp = await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            resp = b""  # refused by a reset
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        stop.set()
        await asyncio.wait_for(task, 10)
        return resp

    resp = asyncio.run(go())
    assert not resp.startswith(b"HTTP/1.1 200"), resp  # 127.0.0.1 is not a client
    out = capfd.readouterr().out
    assert out.startswith(f"claude-bottle guard listening on 127.0.0.1:{port}\n")
    assert "client outside the bottle" in out, out


def test_dns_refuses_a_non_client(tmp_path: Path) -> None:
    from claude_bottle.guard import __main__ as guard_main

    (tmp_path / "policy.json").write_text(json.dumps({"bottle": "t-abcde", "allow": []}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        dport = s.getsockname()[1]
    args = guard_main.parse_args(["--policy", str(tmp_path / "policy.json"), "--listen", f"127.0.0.1:{port}",
                                  "--audit", str(tmp_path / "egress.jsonl"), "--dns", f"127.0.0.1:{dport}",
                                  "--guard-ip", "10.0.0.14", "--ready-file", str(tmp_path / "ready"),
                                  "--clients", "10.9.9.9/32"])  # fmt: skip

    async def go() -> bytes | None:
        stop = asyncio.Event()
        task = asyncio.create_task(guard_main.serve(args, stop))
        for _ in range(500):
            if (tmp_path / "ready").exists():
                break
            await asyncio.sleep(0.01)
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                answers.put_nowait(data)

        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Client, remote_addr=("127.0.0.1", dport)
        )
        transport.sendto(dns_query("egress"))
        try:
            reply: bytes | None = await asyncio.wait_for(answers.get(), 0.5)
        except TimeoutError:
            reply = None
        transport.close()
        stop.set()
        await asyncio.wait_for(task, 10)
        return reply

    assert asyncio.run(go()) is None, "a non-client got an answer"
    assert any(
        ln.get("source") == "dns" and "client outside the bottle" in json.dumps(ln)
        for ln in lines(tmp_path / "egress.jsonl")
    )
