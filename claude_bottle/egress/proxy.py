"""The forward proxy: CONNECT and absolute-URI HTTP to allowed hosts only, everything else 403."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from .audit import AuditLog, Timer
from .policy import Decision, PolicyFile, is_ip, is_public_address, normalise_host

__all__ = ["HEALTH_PATH", "Guard"]

HEALTH_PATH = "/__bottle/health"
MAX_HEAD = 64 * 1024
HEAD_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
CHUNK = 256 * 1024
# Hop-by-hop headers and the proxy's own: never forwarded upstream.
_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
}


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


def parse_head(raw: bytes) -> Request:
    try:
        text = raw.decode("latin-1")
        lines = text.split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise Refused(400, "malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise Refused(400, "only HTTP/1.x is proxied")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise Refused(400, "malformed header")
        headers.append((name, value.strip()))
    return Request(method.upper(), target, version, headers)


def split_host_port(authority: str, default_port: int) -> tuple[str, int]:
    if "@" in authority:
        raise Refused(400, "userinfo in the authority is not allowed")
    host, port = authority, default_port
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise Refused(400, "bad IPv6 literal")
        host, rest = authority[1:end], authority[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise Refused(400, "bad authority")
            port = _port(rest[1:])
    elif authority.count(":") == 1:
        host, p = authority.split(":")
        port = _port(p)
    elif ":" in authority:
        raise Refused(400, "IPv6 literals need brackets")
    host = normalise_host(host)
    if not host:
        raise Refused(400, "empty host")
    return host, port


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise Refused(400, f"bad port {text!r}")
    return int(text)


class Guard:
    """One guard serves one bottle: its policy file, its audit log."""

    def __init__(self, policy: PolicyFile, audit: AuditLog) -> None:
        self.policy = policy
        self.audit = audit
        self.connections = 0

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._handle, host, port, limit=MAX_HEAD, reuse_address=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else "?"
        timer = Timer()
        entry: dict[str, object] = {"kind": "http", "client": client}
        try:
            try:
                raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            except asyncio.LimitOverrunError:
                raise Refused(431, "request head too large") from None
            req = parse_head(raw[:-4])
            entry["method"] = req.method
            if req.method == "CONNECT":
                entry["kind"] = "connect"
                host, port = split_host_port(req.target, 443)
                entry.update(host=host, port=port)
                await self._connect(req, host, port, reader, writer, entry)
            elif req.target.startswith("/"):
                await self._local(req, writer)
                return
            else:
                url = urlsplit(req.target)
                if url.scheme != "http" or not url.netloc:
                    raise Refused(400, "only http:// absolute URIs and CONNECT are proxied")
                host, port = split_host_port(url.netloc, 80)
                path = url.path or "/"
                entry.update(host=host, port=port, path=path)
                await self._forward(
                    req, host, port, path + (f"?{url.query}" if url.query else ""), reader, writer, entry
                )
        except Refused as exc:
            entry.setdefault("decision", "deny")
            entry["reason"] = exc.reason
            await self._refuse(writer, exc.status, exc.reason)
        except (ConnectionError, asyncio.IncompleteReadError):
            entry.setdefault("reason", "client went away")
        finally:
            if "decision" in entry or "host" in entry:
                entry.setdefault("decision", "deny")
                entry["duration_ms"] = timer.ms()
                self.audit.write(**entry)
            with contextlib.suppress(Exception):
                writer.close()
            self.connections -= 1

    def _decide(self, host: str, port: int, entry: dict[str, object]) -> Decision:
        decision = self.policy.current().check(host, port)
        entry["decision"] = "allow" if decision.allowed else "deny"
        entry["reason"] = decision.reason
        if not decision.allowed:
            raise Refused(403, decision.reason)
        return decision

    async def _open(
        self, host: str, port: int, decision: Decision, entry: dict[str, object]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if is_ip(host):
            addrs = [host]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError:
                entry["decision"] = "deny"
                raise Refused(502, f"cannot resolve {host}") from None
            addrs = list(dict.fromkeys(str(info[4][0]) for info in infos))
        allow_private = decision.rule is not None and decision.rule.private
        usable = [a for a in addrs if allow_private or is_public_address(a)]
        if not usable:
            entry["decision"] = "deny"
            raise Refused(403, f"ssrf: {host} resolves to a non-public address ({addrs[0]})")
        last: Exception | None = None
        for addr in usable:  # connect to the very address that was checked: no second lookup
            try:
                conn = await asyncio.wait_for(asyncio.open_connection(addr, port, limit=CHUNK), CONNECT_TIMEOUT)
            except (TimeoutError, OSError) as exc:
                last = exc
                continue
            entry["addr"] = addr
            return conn
        entry["decision"] = "deny"
        raise Refused(502, f"cannot connect to {host}:{port} ({type(last).__name__})")

    async def _connect(
        self,
        req: Request,
        host: str,
        port: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        entry: dict[str, object],
    ) -> None:
        decision = self._decide(host, port, entry)
        up_r, up_w = await self._open(host, port, decision, entry)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await self._relay(reader, writer, up_r, up_w, entry, b"")

    async def _forward(
        self,
        req: Request,
        host: str,
        port: int,
        path: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        entry: dict[str, object],
    ) -> None:
        decision = self._decide(host, port, entry)
        up_r, up_w = await self._open(host, port, decision, entry)
        authority = (f"[{host}]" if ":" in host else host) + ("" if port == 80 else f":{port}")
        lines = [f"{req.method} {path} HTTP/1.1", f"Host: {authority}"]
        # The Host header is always the checked host: a different one could reach another vhost.
        lines += [f"{k}: {v}" for k, v in req.headers if k.lower() not in _HOP and k.lower() != "host"]
        lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        await self._relay(reader, writer, up_r, up_w, entry, head)

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
        entry: dict[str, object],
        first: bytes,
    ) -> None:
        counts = {"up": 0, "down": 0}
        if first:
            up_w.write(first)
            counts["up"] += len(first)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, key: str) -> None:
            try:
                while chunk := await src.read(CHUNK):
                    dst.write(chunk)
                    counts[key] += len(chunk)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()
            except (ConnectionError, OSError):
                pass

        try:
            await asyncio.gather(pump(reader, up_w, "up"), pump(up_r, writer, "down"))
        finally:
            entry["bytes_up"] = counts["up"]
            entry["bytes_down"] = counts["down"]
            with contextlib.suppress(Exception):
                up_w.close()

    async def _local(self, req: Request, writer: asyncio.StreamWriter) -> None:
        if req.method == "GET" and req.target == HEALTH_PATH:
            body = json.dumps({"status": "ok", "bottle": self.policy.current().bottle}).encode() + b"\n"
            await self._respond(writer, 200, "OK", body, "application/json")
        else:
            await self._respond(
                writer, 404, "Not Found", b"claude-bottle egress guard: not a proxy request\n", "text/plain"
            )

    async def _refuse(self, writer: asyncio.StreamWriter, status: int, reason: str) -> None:
        phrase = {400: "Bad Request", 403: "Forbidden", 431: "Request Header Fields Too Large", 502: "Bad Gateway"}.get(
            status, "Error"
        )
        body = f"claude-bottle egress guard: {reason}\n".encode()
        with contextlib.suppress(ConnectionError, OSError):
            await self._respond(writer, status, phrase, body, "text/plain", reason)

    @staticmethod
    async def _respond(
        writer: asyncio.StreamWriter, status: int, phrase: str, body: bytes, ctype: str, reason: str | None = None
    ) -> None:
        head = [
            f"HTTP/1.1 {status} {phrase}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if reason:
            head.append(f"X-Claude-Bottle-Reason: {reason}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
