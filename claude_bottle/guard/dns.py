"""The bottle's DNS: the names the bottle needs, NXDOMAIN for everything else, each query audited.

Nothing is ever forwarded, so no query from the agent reaches an outside resolver (no DNS tunnel),
whatever the engine's own resolver does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
import time
from collections.abc import Callable

from claude_bottle.guard.audit import AuditLog
from claude_bottle.guard.dlp import Scanner

__all__ = ["DnsServer", "answer", "parse_query"]

QTYPES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    64: "SVCB",
    65: "HTTPS",
    255: "ANY",
}


def parse_query(msg: bytes) -> tuple[int, int, str, int, int]:
    """(id, flags, name, qtype, end of question) of a DNS query; ValueError when malformed."""
    if len(msg) < 12:
        raise ValueError("short message")
    qid, flags, qdcount = struct.unpack("!HHH", msg[:6])
    if flags & 0x8000 or qdcount != 1:
        raise ValueError("not a single-question query")
    labels, p = [], 12
    while True:
        if p >= len(msg):
            raise ValueError("truncated name")
        n = msg[p]
        if n == 0:
            p += 1
            break
        if n & 0xC0 or p + 1 + n > len(msg):
            raise ValueError("bad label")
        labels.append(msg[p + 1 : p + 1 + n].decode("ascii", "replace"))
        p += 1 + n
    if p + 4 > len(msg) or len(labels) > 127:
        raise ValueError("truncated question")
    qtype, _qclass = struct.unpack("!HH", msg[p : p + 4])
    return qid, flags, ".".join(labels).lower(), qtype, p + 4


def answer(msg: bytes, local: dict[str, str]) -> tuple[bytes, str, str]:
    """The response to a query, its decision and reason. Only names in `local` resolve."""
    qid, flags, name, qtype, qend = parse_query(msg)
    question = msg[12:qend]
    rd = flags & 0x0100
    addr = local.get(name.rstrip("."))
    if addr is None:
        head = struct.pack("!HHHHHH", qid, 0x8400 | rd | 3, 1, 0, 0, 0)  # QR AA NXDOMAIN
        return head + question, "deny", "nxdomain"
    ip = ipaddress.ip_address(addr)
    want = {1: 4, 28: 6}.get(qtype)
    if want != ip.version:  # the name exists, not with that type: NOERROR, no answer
        head = struct.pack("!HHHHHH", qid, 0x8400 | rd, 1, 0, 0, 0)
        return head + question, "allow", "local name"
    rtype = 1 if ip.version == 4 else 28
    rr = b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, 60, len(ip.packed)) + ip.packed
    head = struct.pack("!HHHHHH", qid, 0x8400 | rd, 1, 1, 0, 0)
    return head + question + rr, "allow", "local name"


class DnsServer:
    """UDP and TCP on one port; every query is one audit line (kind "dns") within the audit log's DNS
    budget (bytes per second, with a burst): past it a flood is counted and summarised once a second
    on the guard's timer, so a looping agent can neither fill the host's disk nor hide in the noise.
    Queries past QUERIES_PER_SECOND are dropped unanswered (clients retry), which bounds the work a
    flood costs the guard; TCP connections are capped and short-lived."""

    QUERIES_PER_SECOND = 500
    MAX_TCP = 16
    TCP_QUERIES = 64
    TCP_IDLE = 10.0

    def __init__(
        self,
        audit: AuditLog,
        local: Callable[[], dict[str, str]],
        scanner: Callable[[], Scanner],
        client_allowed: Callable[[str], bool] = lambda _addr: True,
    ) -> None:
        self.audit = audit
        self.local = local
        self.scanner = scanner
        self.client_allowed = client_allowed
        self._second = 0
        self._queries = 0
        self._tcp = 0

    def _may_answer(self) -> bool:
        now = int(time.monotonic())
        if now != self._second:
            self._second, self._queries = now, 0
        self._queries += 1
        return self._queries <= self.QUERIES_PER_SECOND

    def handle(self, msg: bytes, client: str) -> bytes | None:
        if not self.client_allowed(client):
            self.audit.count("dns", ("deny", "client outside the bottle"))
            return None
        if not self._may_answer():
            self.audit.count("dns", ("deny", "query flood: dropped"))
            return None
        try:
            reply, decision, reason = answer(msg, self.local())
            _, _, name, qtype, _ = parse_query(msg)
        except ValueError:
            return None
        scanner = self.scanner()
        hit = scanner.find_host(name)
        if hit is not None:  # even a local name carrying a secret gets no answer
            reply, decision, reason = answer(msg, {})[0], "deny", hit.reason
        self.audit.budgeted(
            "dns",
            (decision, reason),
            kind="dns",
            client=client,
            host=scanner.redact_host(name),
            qtype=QTYPES.get(qtype, str(qtype)),
            decision=decision,
            reason=reason,
        )
        return reply

    async def serve(self, host: str, port: int) -> tuple[asyncio.DatagramTransport, asyncio.Server]:
        loop = asyncio.get_running_loop()
        server = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                reply = server.handle(data, addr[0])
                if reply is not None:
                    self.transport.sendto(reply, addr)  # type: ignore[attr-defined]

        transport, _ = await loop.create_datagram_endpoint(Udp, local_addr=(host, port))

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername")
            if self._tcp >= self.MAX_TCP or not self.client_allowed(str(peer[0])):
                self.audit.count("dns", ("deny", "tcp connection refused"))
                writer.close()
                return
            self._tcp += 1
            try:
                for _ in range(self.TCP_QUERIES):
                    size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), self.TCP_IDLE))[0]
                    msg = await asyncio.wait_for(reader.readexactly(size), self.TCP_IDLE)
                    reply = server.handle(msg, peer[0])
                    if reply is None:
                        break
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                self._tcp -= 1
                writer.close()

        tcp_server = await asyncio.start_server(tcp, host, port, limit=1024)
        return transport, tcp_server
