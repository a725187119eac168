"""Hostile-input cases from review: parser differentials, tunnel contents, resource limits, redaction."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.guard.http import Refused, parse_head
from claude_bottle.guard.policy import is_public_address
from claude_bottle.guard.tls import client_hello_sni
from claude_bottle.guard.tunnel import inspect_tunnel

from .guardkit import client_hello, send, serving_guard


@pytest.mark.parametrize(
    "raw",
    [
        b"GET http://a.test/ HTTP/1.1\r\nX-A: 1\nHost: evil.test",  # bare LF inside a header
        b"GET http://a.test/ HTTP/1.1\r\nX-A: 1\x00",  # NUL
        b"GET http://a.test/\n HTTP/1.1",  # control character in the target
        b"get http://a.test/ HTTP/1.1",  # methods are upper-case tokens
        b"AKIAIOSFODNN7EXAMPLE http://a.test/ HTTP/1.1",  # not a method: cannot smuggle data in it
        b"GET http://a.test/ HTTP/1.1\r\nBad Name: x",  # header names are tokens
    ],
)
def test_parser_refuses_what_upstreams_might_read_differently(raw: bytes) -> None:
    with pytest.raises(Refused):
        parse_head(raw)


def test_tunnels_carry_tls_naming_the_host_or_ssh_only() -> None:
    host = "a.example"
    assert inspect_tunnel(client_hello(host), host) is None
    assert inspect_tunnel(b"SSH-2.0-OpenSSH_9.2\r\n", host) is None
    for first in (
        b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\nHost: evil\r\n\r\n",
        b"get / http/1.1\r\n\r\n",
        b"\x00\x01binary",
    ):
        assert inspect_tunnel(first, host) == "tunnel-not-tls", first


def test_truncated_client_hellos_are_refused_not_crashes() -> None:
    hello = client_hello("a.example")
    for cut in range(6, len(hello), 7):
        body = bytearray(hello[:cut])
        # Claim the record is exactly this long, so the parser sees a short ClientHello inside it.
        body[3:5] = (cut - 5).to_bytes(2, "big")
        with contextlib.suppress(ValueError):
            client_hello_sni(bytes(body))  # only ValueError (or a result) is acceptable


@pytest.mark.parametrize("addr", ["2002:7f00:1::", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "::ffff:127.0.0.1"])
def test_wrapped_private_v4_addresses_are_not_public(addr: str) -> None:
    assert not is_public_address(addr)


sunk: list[bytes] = []


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upstream that records everything it is sent, then answers."""
    with contextlib.suppress(Exception):
        sunk.append(await asyncio.wait_for(reader.read(), 5))
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    with contextlib.suppress(Exception):
        await writer.drain()
    writer.close()


async def _guard(tmp: Path, fn: Callable[[int, Path], Awaitable[Any]]) -> Any:
    """The guard allowing one loopback upstream (a sink); requests name it as 127.0.0.1:UP."""
    sunk.clear()
    up = await asyncio.start_server(_sink, "127.0.0.1", 0)
    up_port = up.sockets[0].getsockname()[1]
    try:
        async with serving_guard(tmp, [{"host": "127.0.0.1", "ports": [up_port], "private": True}]) as (port, audit):

            async def patched(p: int, a: Path) -> Any:
                return await fn(p, a)

            global UP  # noqa: PLW0603 - the requests below are module-level byte strings
            UP = up_port
            return await patched(port, audit)
    finally:
        up.close()
        await up.wait_closed()


UP = 0


def req(raw: bytes) -> bytes:
    return raw.replace(b"127.0.0.1:1/", b"127.0.0.1:%d/" % UP)


def test_secrets_in_refusal_reasons_are_not_written_to_the_audit_log(tmp_path: Path) -> None:
    async def go(port: int, audit: Path) -> None:
        for raw in (
            b"CONNECT a.example:AKIAIOSFODNN7EXAMPLE HTTP/1.1\r\n\r\n",
            b"POST http://127.0.0.1:1/ HTTP/1.1\r\nTransfer-Encoding: AKIAIOSFODNN7EXAMPLE\r\n\r\n",
        ):
            resp = await send(port, req(raw))
            assert resp.startswith((b"HTTP/1.1 400", b"HTTP/1.1 403"))
        # A refusal's line is written before it is answered: both are there, without the secret.
        text = audit.read_text()
        assert len(text.splitlines()) == 2 and "AKIAIOSFODNN7EXAMPLE" not in text

    asyncio.run(_guard(tmp_path, go))


def test_unicode_digits_and_odd_chunk_sizes_are_400_not_crashes(tmp_path: Path) -> None:
    async def go(port: int, audit: Path) -> None:
        for raw in (
            b"CONNECT a.example:\xc2\xb2 HTTP/1.1\r\n\r\n",
            b"POST http://127.0.0.1:1/ HTTP/1.1\r\nContent-Length: \xc2\xb2\r\n\r\n",
            b"POST http://127.0.0.1:1/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
            b"POST http://127.0.0.1:1/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x10\r\n",
        ):
            resp = await send(port, req(raw))
            assert resp.startswith(b"HTTP/1.1 400"), (raw, resp)
        lines = [json.loads(x) for x in audit.read_text().splitlines()]
        assert [ln["reason"] for ln in lines if ln.get("decision") == "deny"] == [
            "malformed request target",
            "bad Content-Length",
            "bad chunk size",
            "bad chunk size",
        ]
        assert all(b"x" not in s.split(b"\r\n\r\n", 1)[1] for s in sunk)  # no body byte went upstream

    asyncio.run(_guard(tmp_path, go))


def test_many_tiny_chunks_are_bounded(tmp_path: Path) -> None:
    async def go(port: int, audit: Path) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(req(b"POST http://127.0.0.1:1/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"))
        writer.write(b"1\r\nx\r\n" * 20000)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        resp = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert resp.startswith((b"HTTP/1.1 413", b"HTTP/1.1 400"))

    asyncio.run(_guard(tmp_path, go))
