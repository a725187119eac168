"""The guard's DNS, byte for byte: queries parsed at their edges, answers compared with hand-built wire
format, and the server's accounting (who asked, what was dropped, why) exactly."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.guard.audit import AuditLog
from claude_bottle.guard.dlp import Scanner
from claude_bottle.guard.dns import DnsServer, answer, parse_query


def qname(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"


def query(name: str, qtype: int = 1, qid: int = 0xBEEF, flags: int = 0x0100, qd: int = 1) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, 0, 0, 0) + qname(name) + struct.pack("!HH", qtype, 1)


# -- parsing ------------------------------------------------------------------------------------------------
def test_a_query_is_parsed_exactly() -> None:
    q = query("Api.Example.COM", qtype=28, qid=0x1234, flags=0x0120)
    assert parse_query(q) == (0x1234, 0x0120, "api.example.com", 28, len(q))
    assert parse_query(query("x", qtype=0xFFFF, qid=0xFFFF))[::3] == (0xFFFF, 0xFFFF)  # unsigned fields
    root = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\0" + struct.pack("!HH", 2, 1)
    assert parse_query(root) == (1, 0, "", 2, 17)  # the root name: a 12-byte header, one zero, 4 bytes


@pytest.mark.parametrize(
    ("msg", "why"),
    [
        (b"\x00" * 11, "short message"),
        (struct.pack("!HHHHHH", 1, 0x8000, 1, 0, 0, 0) + qname("a") + b"\0\x01\0\x01", "not a single-question query"),
        (struct.pack("!HHHHHH", 1, 0, 2, 0, 0, 0) + qname("a") + b"\0\x01\0\x01", "not a single-question query"),
        (struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0), "truncated name"),  # exactly the header
        (struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x03ab", "bad label"),  # a label past the end
        (struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c", "bad label"),  # a compression pointer
        (struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + qname("a") + b"\0\x01\0", "truncated question"),
        (struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x01a" * 128 + b"\0\0\x01\0\x01", "truncated question"),
    ],
)
def test_malformed_queries_are_refused_with_why(msg: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_query(msg)


def test_label_lengths_at_the_edge_of_the_message() -> None:
    head = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0)
    exact = head + b"\x02ab" + b"\0" + b"\0\x01\0\x01"
    assert parse_query(exact)[2] == "ab"
    assert parse_query(head + b"\x01a" * 127 + b"\0\0\x01\0\x01")[2].count("a") == 127  # 127 labels: allowed


# -- answers ------------------------------------------------------------------------------------------------
def test_nxdomain_is_exactly_this() -> None:
    q = query("outside.example", qid=0x0A0B, flags=0x0100)
    reply, decision, reason = answer(q, {})
    assert (decision, reason) == ("deny", "nxdomain")
    assert reply == struct.pack("!HHHHHH", 0x0A0B, 0x8503, 1, 0, 0, 0) + q[12:]  # QR AA RD NXDOMAIN
    reply, _, _ = answer(query("outside.example", flags=0), {})
    assert struct.unpack("!H", reply[2:4])[0] == 0x8403  # no recursion desired: none echoed


def test_a_local_name_answers_with_exactly_one_record() -> None:
    q = query("egress.", qid=7)
    reply, decision, reason = answer(q, {"egress": "10.0.0.14"})
    assert (decision, reason) == ("allow", "local name")
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([10, 0, 0, 14])
    assert reply == struct.pack("!HHHHHH", 7, 0x8500, 1, 1, 0, 0) + q[12:] + rr
    q6 = query("v6", qtype=28, qid=8)
    reply6, _, _ = answer(q6, {"v6": "fd00::1"})
    rr6 = b"\xc0\x0c" + struct.pack("!HHIH", 28, 1, 60, 16) + bytes.fromhex("fd000000000000000000000000000001")
    assert reply6 == struct.pack("!HHHHHH", 8, 0x8500, 1, 1, 0, 0) + q6[12:] + rr6


def test_a_local_name_of_the_other_family_is_nodata() -> None:
    q = query("egress", qtype=28, qid=9)
    reply, decision, reason = answer(q, {"egress": "10.0.0.14"})
    assert (decision, reason) == ("allow", "local name")
    assert reply == struct.pack("!HHHHHH", 9, 0x8500, 1, 0, 0, 0) + q[12:]
    reply_txt, _, _ = answer(query("egress", qtype=16, qid=9), {"egress": "10.0.0.14"})
    assert struct.unpack("!HHHHHH", reply_txt[:12]) == (9, 0x8500, 1, 0, 0, 0)


# -- the server's accounting ---------------------------------------------------------------------------------
def server(tmp_path: Path, allowed: list[str] | None = None) -> tuple[DnsServer, AuditLog, list[str]]:
    asked: list[str] = []

    def client_allowed(addr: str) -> bool:
        asked.append(addr)
        return allowed is None or addr in allowed

    log = AuditLog(tmp_path / "egress.jsonl", bottle="t")
    return DnsServer(log, lambda: {"egress": "10.0.0.14"}, Scanner, client_allowed), log, asked


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_each_query_is_one_exact_line(tmp_path: Path) -> None:
    dns, log, asked = server(tmp_path)
    dns.handle(query("egress"), "10.0.0.3")
    dns.handle(query("svc.example", qtype=99), "10.0.0.3")
    log.close()
    first, second = lines(tmp_path / "egress.jsonl")
    assert {k: first[k] for k in ("kind", "client", "host", "qtype", "decision", "reason")} == {
        "kind": "dns", "client": "10.0.0.3", "host": "egress", "qtype": "A", "decision": "allow",
        "reason": "local name",
    }  # fmt: skip
    assert second["qtype"] == "99" and second["reason"] == "nxdomain"
    assert asked == ["10.0.0.3", "10.0.0.3"]


def test_outsiders_and_floods_are_counted_by_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DnsServer, "QUERIES_PER_SECOND", 3)
    dns, log, _ = server(tmp_path, allowed=["10.0.0.3"])
    assert dns.handle(query("egress"), "192.0.2.9") is None
    replies = [dns.handle(query("egress"), "10.0.0.3") for _ in range(5)]
    assert [r is not None for r in replies] == [True, True, True, False, False]
    log.flush_summaries()
    log.close()
    (summary,) = [ln for ln in lines(tmp_path / "egress.jsonl") if ln["kind"] == "summary"]
    assert summary["counts"] == [
        {"decision": "deny", "reason": "client outside the bottle", "count": 1},
        {"decision": "deny", "reason": "query flood: dropped", "count": 2},
    ]


def test_the_rate_window_is_per_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DnsServer, "QUERIES_PER_SECOND", 2)
    now = [100.0]
    monkeypatch.setattr("claude_bottle.guard.dns.time.monotonic", lambda: now[0])
    dns, log, _ = server(tmp_path)
    assert [dns.handle(query("egress"), "10.0.0.3") is not None for _ in range(3)] == [True, True, False]
    now[0] = 101.2
    assert [dns.handle(query("egress"), "10.0.0.3") is not None for _ in range(3)] == [True, True, False]
    log.close()


def test_udp_and_tcp_pass_the_clients_address(tmp_path: Path) -> None:
    async def go() -> list[str]:
        dns, log, asked = server(tmp_path)
        udp, tcp = await dns.serve("127.0.0.1", 0)
        port = tcp.sockets[0].getsockname()[1]
        uport = udp.get_extra_info("sockname")[1]
        loop = asyncio.get_running_loop()
        got: asyncio.Queue[bytes] = asyncio.Queue()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                got.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", uport))
        transport.sendto(query("egress"))
        assert (await asyncio.wait_for(got.get(), 5))[:2] == b"\xbe\xef"
        transport.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        q = query("egress", qid=0x4141)
        writer.write(struct.pack("!H", len(q)) + q)
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        assert (await reader.readexactly(size))[:2] == b"AA" and size > 12
        writer.write(struct.pack("!H", 3) + b"bad")  # not a query: the connection ends
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert dns._tcp == 0
        udp.close()
        tcp.close()
        await tcp.wait_closed()
        log.close()
        return asked

    # UDP query, TCP connection, TCP query, the bad TCP message: each asked about the client's own address.
    assert asyncio.run(go()) == ["127.0.0.1"] * 4
