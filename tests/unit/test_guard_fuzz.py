"""The guard's request parser fuzzed (issue 14): whatever head arrives, the guard never crashes, always
decides, and the decision is on record. Hypothesis builds heads from a grammar of what HTTP proxies get
wrong (framing, encodings, targets, header folding, bytes that are not text), plus raw noise."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from claude_bottle.guard import proxy
from claude_bottle.guard.audit import AuditLog
from claude_bottle.guard.policy import PolicyFile
from claude_bottle.guard.proxy import Guard


class Served:
    """The guard and a plain upstream on loopback, on a loop in a thread of their own."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.audit = tmp / "egress.jsonl"
        self.tmp = tmp
        self.port, self.up = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> tuple[int, int]:
        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 1)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()

        self.upstream = await asyncio.start_server(upstream, "127.0.0.1", 0)
        up = self.upstream.sockets[0].getsockname()[1]
        (self.tmp / "policy.json").write_text(
            json.dumps({"bottle": "t-abcde", "allow": [{"host": "127.0.0.1", "ports": [up], "private": True}]})
        )
        self.log = AuditLog(self.audit, bottle="t-abcde", rate=1e9, burst=1e9)  # every line, for the count
        self.guard = Guard(PolicyFile(self.tmp / "policy.json"), self.log, None)
        self.server = await self.guard.serve("127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1], up

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.guard.close_connections()
            await self.server.wait_closed()
            self.upstream.close()
            await self.upstream.wait_closed()
            self.log.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    mp = pytest.MonkeyPatch()
    for name in ("BODY_TIMEOUT", "HEAD_TIMEOUT", "FIRST_BYTES_TIMEOUT", "RESPONSE_TIMEOUT", "CONNECT_TIMEOUT"):
        mp.setattr(proxy, name, 0.3)  # waits for bytes that never come end at once
    s = Served(tmp_path_factory.mktemp("fuzz"))
    yield s
    s.close()
    mp.undo()


TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'", min_size=1, max_size=12)
ANY = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=40)
VALUES = st.one_of(
    ANY,
    st.sampled_from(["chunked", "gzip, chunked", "chunked, chunked", "identity", " chunked", "chunked\t", "xchunked"]),
    st.integers(-5, 10**20).map(str),
    st.sampled_from(["0x10", "1e3", "+5", "5 5", "05", ""]),
)
NAMES = st.one_of(
    TOKEN,
    st.sampled_from(
        ["Content-Length", "Transfer-Encoding", "Host", "Content-Encoding", "Expect", "Upgrade", "Connection",
         "Proxy-Authorization", "x-api-key", "Content-Length ", " Host", "Transfer-Encoding\t"]
    ),
)  # fmt: skip


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    up = draw(st.sampled_from(["127.0.0.1:{up}", "127.0.0.1", "localhost:{up}", "[::1]:{up}", "10.0.0.1", ""]))
    target = draw(
        st.one_of(
            st.builds(lambda p, q: f"http://{up}{p}{q}", st.sampled_from(["/", "", "/a/../b", "/%00", "/x y"]), ANY),
            st.builds(lambda h: f"{h}", st.sampled_from([up, f"https://{up}/", "/", "*", "http://", ""])),
            ANY,
        )
    )
    method = draw(st.one_of(st.sampled_from(["GET", "POST", "CONNECT", "PUT", "get", "G ET", ""]), TOKEN))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 x", "", "http/1.1"]))
    headers = draw(st.lists(st.tuples(NAMES, VALUES), max_size=8))
    sep = draw(st.sampled_from([": ", ":", " : ", ":\t"]))
    lines = [f"{method} {target} {version}".rstrip(), *(f"{k}{sep}{v}" for k, v in headers)]
    if draw(st.booleans()):
        lines.append(" folded continuation")
    head = "\r\n".join(lines).replace("{up}", "UPPORT").encode("latin-1") + b"\r\n\r\n"
    body = draw(st.binary(max_size=64))
    return head + body


def exchange(served: Served, raw: bytes) -> bytes:
    raw = raw.replace(b"UPPORT", str(served.up).encode())
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(raw)
        data = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            while chunk := s.recv(65536):
                data += chunk
    return data


def records(served: Served) -> list[dict[str, object]]:
    return [json.loads(x) for x in served.audit.read_text().splitlines()]


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(heads(), st.binary(max_size=200).map(lambda b: b.replace(b"\r\n\r\n", b"") + b"\r\n\r\n")))
def test_any_head_gets_a_decision_on_record_and_never_a_crash(served: Served, raw: bytes) -> None:
    before = len(records(served))
    reply = exchange(served, raw)
    new = records(served)[before:]
    decisions = [ln for ln in new if ln.get("decision") in ("allow", "deny")]
    assert len(decisions) == 1, (raw, reply, new)  # always exactly one decision, on record
    line = decisions[0]
    assert line["reason"] != "internal error", (raw, new)  # a parser path that raised: fail-closed, but a bug
    if line["decision"] == "deny":
        assert reply.startswith((b"HTTP/1.1 4", b"HTTP/1.1 5")) or reply == b"", (raw, reply)
        if reply:
            assert f"X-Claude-Bottle-Reason: {line['reason']}".encode() in reply
    else:
        assert reply == b"" or reply.startswith(b"HTTP/1.1 "), (raw, reply)
    assert served.guard.connections <= 1
