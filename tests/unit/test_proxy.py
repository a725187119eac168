"""The guard in-process on loopback, with a local upstream: decisions, responses and audit lines."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.guard.proxy import HEALTH_PATH

from .guardkit import serving_guard

Rules = list[dict[str, Any]]


async def _upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    body = b"upstream saw: " + head.split(b"\r\n")[0] + b"\n" + head
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    await writer.drain()
    writer.close()


class Env:
    def __init__(self, tmp: Path, guard_port: int, upstream_port: int, audit: Path) -> None:
        self.tmp, self.guard_port, self.upstream_port, self.audit = tmp, guard_port, upstream_port, audit

    async def request(self, raw: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.guard_port)
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
        return data

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.audit.read_text().splitlines()]

    async def wait_lines(self, n: int = 1) -> list[dict[str, Any]]:
        """Audit lines: a decision when it is made, an allowed connection's closing line when it ends."""
        for _ in range(200):
            if len(self.lines()) >= n:
                break
            await asyncio.sleep(0.01)
        return self.lines()


@pytest.fixture
def make_env(tmp_path: Path) -> Path:
    return tmp_path


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def _with_env(tmp_path: Path, allow: Rules, fn: Callable[[Env], Awaitable[Any]]) -> Any:
    """Upstream and guard on loopback for the duration of fn, closed before the loop ends."""
    up = await asyncio.start_server(_upstream, "127.0.0.1", 0)
    up_port = up.sockets[0].getsockname()[1]
    rules = [{**r, "ports": r.get("ports", [up_port])} for r in allow]
    try:
        async with serving_guard(tmp_path, rules) as (port, audit):
            return await fn(Env(tmp_path, port, up_port, audit))
    finally:
        up.close()
        await up.wait_closed()


def test_connect_allowed_relays_both_ways(make_env: Any) -> None:
    async def go(env: Env) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.guard_port)
        writer.write(f"CONNECT 127.0.0.1:{env.upstream_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        status = await reader.readuntil(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 200")
        writer.write(b"SSH-2.0-tunnelled\r\n\r\n")  # tunnels carry TLS or SSH; the fake upstream echoes it
        body = await asyncio.wait_for(reader.read(), 5)
        assert b"upstream saw: SSH-2.0-tunnelled" in body
        writer.close()
        await writer.wait_closed()
        line, end = await env.wait_lines(2)
        assert line["kind"] == "connect" and line["decision"] == "allow"
        assert line["host"] == "127.0.0.1" and line["port"] == env.upstream_port
        for key in ("time", "bottle", "client", "method", "reason", "conn"):
            assert key in line
        assert end["kind"] == "end" and end["conn"] == line["conn"] and "decision" not in end
        assert end["bytes_up"] > 0 and end["bytes_down"] > len(b"upstream saw")
        for key in ("time", "bottle", "duration_ms"):
            assert key in end

    run(_with_env(make_env, [{"host": "127.0.0.1", "private": True}], go))


def test_connect_refused_host_is_403_with_reason_and_audited(make_env: Any) -> None:
    async def go(env: Env) -> None:
        resp = await env.request(b"CONNECT forbidden.test:443 HTTP/1.1\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 403 Forbidden")
        assert b"host not in allow list" in resp
        (line,) = await env.wait_lines()
        assert line["decision"] == "deny" and line["host"] == "forbidden.test" and line["port"] == 443
        assert line["reason"] == "host not in allow list"

    run(_with_env(make_env, [{"host": "127.0.0.1", "private": True}], go))


def test_allowed_port_only(make_env: Any) -> None:
    async def go(env: Env) -> None:
        resp = await env.request(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 403") and b"port 1 not allowed" in resp

    run(_with_env(make_env, [{"host": "127.0.0.1", "private": True}], go))


def test_private_address_needs_private_rule(make_env: Any) -> None:
    async def go(env: Env) -> None:
        resp = await env.request(f"CONNECT localhost:{env.upstream_port} HTTP/1.1\r\n\r\n".encode())
        assert resp.startswith(b"HTTP/1.1 403") and b"ssrf" in resp
        assert (await env.wait_lines())[0]["decision"] == "deny"

    run(_with_env(make_env, [{"host": "localhost"}], go))


def test_absolute_uri_http_forwarded_with_checked_host(make_env: Any) -> None:
    async def go(env: Env) -> None:
        resp = await env.request(
            f"GET http://127.0.0.1:{env.upstream_port}/a/b?q=1 HTTP/1.1\r\n"
            "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\r\n".encode()
        )
        assert resp.startswith(b"HTTP/1.1 200")
        assert b"upstream saw: GET /a/b?q=1 HTTP/1.1" in resp
        assert f"Host: 127.0.0.1:{env.upstream_port}".encode() in resp
        assert b"Proxy-Authorization" not in resp
        line, end = await env.wait_lines(2)
        assert line["kind"] == "http" and line["path"] == "/a/b" and line["decision"] == "allow"
        assert line["query"] == "q=1" and end["conn"] == line["conn"] and end["bytes_down"] == len(resp)

    run(_with_env(make_env, [{"host": "127.0.0.1", "private": True}], go))


def test_host_header_naming_another_host_is_refused(make_env: Any) -> None:
    async def go(env: Env) -> None:
        resp = await env.request(
            f"GET http://127.0.0.1:{env.upstream_port}/ HTTP/1.1\r\nHost: evil.test\r\n\r\n".encode()
        )
        assert resp.startswith(b"HTTP/1.1 403") and b"host-header-mismatch" in resp

    run(_with_env(make_env, [{"host": "127.0.0.1", "private": True}], go))


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET https://x.test/ HTTP/1.1\r\n\r\n", b"400"),
        (b"NONSENSE\r\n\r\n", b"400"),
        (b"CONNECT user@127.0.0.1:443 HTTP/1.1\r\n\r\n", b"400"),
        (b"GET /other HTTP/1.1\r\n\r\n", b"404"),
        (b"CONNECT ::1:443 HTTP/1.1\r\n\r\n", b"400"),
    ],
)
def test_bad_requests(make_env: Any, raw: bytes, status: bytes) -> None:
    async def go(env: Env) -> None:
        resp = await env.request(raw)
        assert resp.startswith(b"HTTP/1.1 " + status), resp

    run(_with_env(make_env, [], go))


def test_health_endpoint_not_audited(make_env: Any) -> None:
    async def go(env: Env) -> None:
        resp = await env.request(f"GET {HEALTH_PATH} HTTP/1.1\r\n\r\n".encode())
        assert resp.startswith(b"HTTP/1.1 200") and b'"status": "ok"' in resp
        assert env.lines() == []

    run(_with_env(make_env, [], go))


def test_decimal_ip_spelling_is_normalised_before_matching(make_env: Any) -> None:
    async def go(env: Env) -> None:
        # 2130706433 is 127.0.0.1: the allow rule for 127.0.0.1 applies, not a bypass or a miss.
        reader, writer = await asyncio.open_connection("127.0.0.1", env.guard_port)
        writer.write(f"CONNECT 2130706433:{env.upstream_port} HTTP/1.1\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()
        await writer.wait_closed()
        assert (await env.wait_lines())[0]["host"] == "127.0.0.1"

    run(_with_env(make_env, [{"host": "127.0.0.1", "private": True}], go))
