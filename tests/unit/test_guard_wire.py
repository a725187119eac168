"""What the guard puts on the wire for a plain-HTTP request, byte for byte: the framing it sends upstream,
`Expect: 100-continue`, the byte counts on the closing audit line, the answer when the upstream says
nothing, and the body limit at its exact edge."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.guard import http

from .guardkit import send as exchange
from .guardkit import serving_guard


async def upstream_seeing(seen: list[bytes], *, answer: bytes | None = b"ok") -> tuple[asyncio.Server, int]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0
        )
        seen.append(head + (await reader.readexactly(length) if length else b""))
        if answer is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(answer) + answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_a_bodyless_write_is_sent_with_content_length_zero(tmp_path: Path, method: str) -> None:
    seen: list[bytes] = []

    async def go() -> None:
        up, up_port = await upstream_seeing(seen)
        async with serving_guard(tmp_path, [{"host": "127.0.0.1", "ports": [up_port], "private": True}]) as (port, _):
            resp = await exchange(port, f"{method} http://127.0.0.1:{up_port}/x HTTP/1.1\r\n\r\n".encode())
            assert resp.startswith(b"HTTP/1.1 200")
        up.close()

    asyncio.run(go())
    assert b"\r\nContent-Length: 0\r\n" in seen[0]


def test_a_chunked_body_goes_on_chunked_and_get_gets_no_length(tmp_path: Path) -> None:
    seen: list[bytes] = []

    async def go() -> None:
        up, up_port = await upstream_seeing(seen)
        rule = [{"host": "127.0.0.1", "ports": [up_port], "private": True}]
        async with serving_guard(tmp_path, rule) as (port, _):
            await exchange(port, f"GET http://127.0.0.1:{up_port}/ HTTP/1.1\r\n\r\n".encode())
        up.close()

    asyncio.run(go())
    assert b"Content-Length" not in seen[0] and b"Transfer-Encoding" not in seen[0]


def test_expect_100_continue_is_answered_by_the_guard(tmp_path: Path) -> None:
    seen: list[bytes] = []

    async def go() -> None:
        up, up_port = await upstream_seeing(seen)
        async with serving_guard(tmp_path, [{"host": "127.0.0.1", "ports": [up_port], "private": True}]) as (port, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"POST http://127.0.0.1:{up_port}/ HTTP/1.1\r\nExpect: 100-Continue\r\n"
                         "Content-Length: 5\r\n\r\n".encode())  # fmt: skip
            await writer.drain()
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"  # before the body is sent
            writer.write(b"hello")
            rest = await asyncio.wait_for(reader.read(), 10)
            assert rest.startswith(b"HTTP/1.1 200")
            writer.close()
        up.close()

    asyncio.run(go())
    assert seen[0].endswith(b"\r\n\r\nhello")


def test_the_closing_line_counts_every_byte_each_way(tmp_path: Path) -> None:
    seen: list[bytes] = []

    async def go() -> bytes:
        up, up_port = await upstream_seeing(seen, answer=b"0123456789")
        async with serving_guard(tmp_path, [{"host": "127.0.0.1", "ports": [up_port], "private": True}]) as (port, _):
            resp = await exchange(port, f"POST http://127.0.0.1:{up_port}/ HTTP/1.1\r\nContent-Length: 7\r\n\r\n"
                                        "payload".encode())  # fmt: skip
        up.close()
        return resp

    resp = asyncio.run(go())
    (end,) = [ln for ln in lines(tmp_path / "egress.jsonl") if ln.get("kind") == "end"]
    assert end["bytes_up"] == len(seen[0]) and end["bytes_down"] == len(resp)


def test_an_upstream_that_closes_without_answering_is_said_so(tmp_path: Path) -> None:
    seen: list[bytes] = []

    async def go() -> bytes:
        up, up_port = await upstream_seeing(seen, answer=None)
        async with serving_guard(tmp_path, [{"host": "127.0.0.1", "ports": [up_port], "private": True}]) as (port, _):
            resp = await exchange(port, f"GET http://127.0.0.1:{up_port}/ HTTP/1.1\r\n\r\n".encode())
        up.close()
        return resp

    resp = asyncio.run(go())
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502") and b"\r\nContent-Type: text/plain" in head
    assert body == b"claude-bottle egress guard: the upstream closed without answering\n"


@pytest.mark.parametrize("chunked", [False, True])
def test_the_body_limit_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunked: bool) -> None:
    monkeypatch.setattr(http, "MAX_BODY", 64)
    seen: list[bytes] = []

    def request(up_port: int, body: bytes) -> bytes:
        if chunked:
            framing, data = "Transfer-Encoding: chunked\r\n", b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
        else:
            framing, data = f"Content-Length: {len(body)}\r\n", body
        return f"POST http://127.0.0.1:{up_port}/ HTTP/1.1\r\n{framing}\r\n".encode() + data

    async def go() -> tuple[bytes, bytes]:
        up, up_port = await upstream_seeing(seen)
        async with serving_guard(tmp_path, [{"host": "127.0.0.1", "ports": [up_port], "private": True}]) as (port, _):
            at = await exchange(port, request(up_port, b"a" * 64))
            over = await exchange(port, request(up_port, b"a" * 65))
        up.close()
        return at, over

    at, over = asyncio.run(go())
    assert at.startswith(b"HTTP/1.1 200"), at
    assert over.startswith(b"HTTP/1.1 413"), over
