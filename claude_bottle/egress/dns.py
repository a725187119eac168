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

from .audit import AuditLog
from .dlp import Scanner

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
    """UDP and TCP on one port; every query is one audit line (kind "dns"), up to LINES_PER_SECOND: past
    that a flood is summarised in one line a second, so a looping agent cannot fill the host's disk."""

    LINES_PER_SECOND = 50

    def __init__(self, audit: AuditLog, local: Callable[[], dict[str, str]], scanner: Callable[[], Scanner]) -> None:
        self.audit = audit
        self.local = local
        self.scanner = scanner
        self._second = 0
        self._lines = 0
        self._suppressed = 0

    def _may_log(self) -> bool:
        now = int(time.monotonic())
        if now != self._second:
            if self._suppressed:
                self.audit.write(
                    kind="dns",
                    decision="deny",
                    reason="rate-limited",
                    suppressed=self._suppressed,
                    note="queries answered but not logged one by one",
                )
            self._second, self._lines, self._suppressed = now, 0, 0
        self._lines += 1
        if self._lines > self.LINES_PER_SECOND:
            self._suppressed += 1
            return False
        return True

    def handle(self, msg: bytes, client: str) -> bytes | None:
        try:
            reply, decision, reason = answer(msg, self.local())
            _, _, name, qtype, _ = parse_query(msg)
        except ValueError:
            return None
        scanner = self.scanner()
        hit = scanner.find_host(name)
        if hit is not None:  # even a local name carrying a secret gets no answer
            reply, decision, reason = answer(msg, {})[0], "deny", hit.reason
        if not self._may_log():
            return reply
        self.audit.write(
            kind="dns",
            client=client,
            host=scanner.redact(name),
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
            try:
                while True:
                    size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))[0]
                    reply = server.handle(await asyncio.wait_for(reader.readexactly(size), 10), peer[0])
                    if reply is None:
                        break
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        tcp_server = await asyncio.start_server(tcp, host, port)
        return transport, tcp_server
