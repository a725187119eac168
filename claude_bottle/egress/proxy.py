"""The forward proxy: CONNECT and absolute-URI HTTP to allowed hosts only, credential routes, DLP.

Every request gets one decision and one audit line. Refusals answer 403 (or 400/502/413) with a
one-line reason in the body and in X-Claude-Bottle-Reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import ssl
import traceback
from collections.abc import Callable, Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

from .audit import AuditLog, Timer
from .config import Route, Secrets
from .dlp import Scanner
from .policy import Decision, PolicyFile, is_ip, is_public_address, normalise_host
from .tls import NEED_MORE, client_hello_sni

__all__ = ["HEALTH_PATH", "Guard", "Refused"]

from . import HEALTH_PATH

MAX_HEAD = 64 * 1024
MAX_BODY = 32 * 1024 * 1024
MAX_CHUNKS = 16384
BODY_TIMEOUT = 120.0
MAX_CONNECTIONS = 2048  # beyond this a client waits: the guard's memory and descriptors stay bounded
HEAD_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
FIRST_BYTES_TIMEOUT = 30.0
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
    "transfer-encoding",
    "content-length",
    "expect",
    "host",
}
_CRED_HEADERS = {"x-api-key", "authorization"}
_PHRASES = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
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
        values = self.all(name)
        if len(values) > 1:
            raise Refused(400, f"repeated {name} header")
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def forwarded_headers(self, drop: Collection[str] = ()) -> list[str]:
        return [f"{k}: {v}" for k, v in self.headers if k.lower() not in _HOP and k.lower() not in drop]


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(r"[\x21-\x7e]+")  # visible ASCII: no spaces, controls or bytes a server may read otherwise
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")  # no CR, LF, NUL or other controls


def parse_head(raw: bytes) -> Request:
    """A request head, strictly: anything an upstream could read differently is refused."""
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise Refused(400, "malformed request line")
    method, target, version = parts
    if method not in METHODS:
        raise Refused(400, "unsupported method")
    if not _TARGET.fullmatch(target):
        raise Refused(400, "malformed request target")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise Refused(400, "only HTTP/1.x is proxied")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            raise Refused(400, "malformed header")
        headers.append((name, value.strip(" \t")))
    return Request(method, target, version, headers)


def split_host_port(authority: str, default_port: int) -> tuple[str, int]:
    if "@" in authority:
        raise Refused(400, "userinfo in the authority is not allowed")
    host, port = authority, default_port
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise Refused(400, "bad IPv6 literal")
        host, rest = authority[: end + 1], authority[end + 1 :]
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
    if not host or host.startswith("["):
        raise Refused(400, "bad host")
    return host, port


def _number(text: str, base: int = 10) -> int | None:
    """ASCII digits only (int() also takes "²", "+1", "0x1", "1_0"): None when it is not one."""
    digits = "0123456789abcdefABCDEF"[: 10 if base == 10 else 22]
    if not text or len(text) > 16 or any(c not in digits for c in text):
        return None
    return int(text, base)


def _port(text: str) -> int:
    n = _number(text)
    if n is None or not 0 < n < 65536:
        raise Refused(400, "bad port")  # never echo the agent's bytes into a reason: reasons are logged
    return n


async def read_body(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """The whole request body, read within BODY_TIMEOUT, so it can be scanned before it leaves."""
    try:
        return await asyncio.wait_for(_read_body(req, reader, writer), BODY_TIMEOUT)
    except TimeoutError:
        raise Refused(408, "request body too slow") from None


async def _read_body(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """The whole request body (Content-Length or chunked), so it can be scanned before it leaves."""
    te = req.header("transfer-encoding")
    cl = req.header("content-length")
    if te is not None and cl is not None:
        raise Refused(400, "both Content-Length and Transfer-Encoding")  # request smuggling shape
    if (req.header("expect") or "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if te is not None:
        if te.lower() != "chunked":
            raise Refused(400, "unsupported Transfer-Encoding")
        body = bytearray()
        for _ in range(MAX_CHUNKS):
            line = await reader.readuntil(b"\r\n")
            size = _number(line.split(b";")[0].strip().decode("latin-1"), 16)
            if size is None:
                raise Refused(400, "bad chunk size")
            if size == 0:
                for _ in range(64):  # trailers, bounded
                    if await reader.readuntil(b"\r\n") == b"\r\n":
                        return bytes(body)
                raise Refused(400, "too many trailers")
            if len(body) + size > MAX_BODY:
                raise Refused(413, "request body over 32 MiB")
            body += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise Refused(400, "bad chunk framing")
        raise Refused(413, "too many chunks")
    if cl is None:
        return b""
    length = _number(cl)
    if length is None:
        raise Refused(400, "bad Content-Length")
    if length > MAX_BODY:
        raise Refused(413, "request body over 32 MiB")
    return await reader.readexactly(length)


def inspect_tunnel(buf: bytes, host: str) -> str | None:
    """Check the first bytes a client sends into a tunnel: TLS SNI or HTTP Host must name the
    CONNECT host. Returns a refusal reason, None when fine, or raises LookupError for "need more"."""
    if not buf:
        return None
    if buf[0] == 0x16:
        try:
            sni = client_hello_sni(buf)
        except ValueError:
            return "bad-client-hello"
        if sni is NEED_MORE:
            raise LookupError
        if sni is not None and normalise_host(str(sni)) != host:
            return "sni-mismatch"
        return None
    if buf.startswith(b"SSH-2.0-") or (len(buf) < 8 and b"SSH-2.0-".startswith(buf)):
        if len(buf) < 8:
            raise LookupError
        return None  # git over SSH to an allowed host: the host key, not a name, says who answers
    # Plain HTTP inside a tunnel could name any virtual host on the allowed address, request after
    # request; plain HTTP goes through the absolute-URI path instead, where every request is checked.
    return "tunnel-not-tls"


class Guard:
    """One guard serves one bottle: its policy file, secrets, audit log."""

    def __init__(
        self, policy: PolicyFile, audit: AuditLog, secrets: Secrets | None = None, cafile: str | None = None
    ) -> None:
        self.policy = policy
        self.audit = audit
        self.secrets = secrets or Secrets()
        self.connections = 0
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._ssl = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()

    @property
    def scanner(self) -> Scanner:
        return self.secrets.scanner

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._handle, host, port, limit=MAX_HEAD, reuse_address=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._slots:
            await self._handle_one(reader, writer)

    async def _handle_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        peer = writer.get_extra_info("peername")
        timer = Timer()
        entry: dict[str, object] = {"kind": "http", "client": peer[0] if peer else "?"}
        try:
            try:
                raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            except asyncio.LimitOverrunError:
                raise Refused(431, "request head too large") from None
            req = parse_head(raw[:-4])
            entry["method"] = req.method
            await self._dispatch(req, reader, writer, entry)
        except Refused as exc:
            entry["decision"] = "deny"
            entry["reason"] = exc.reason
            await self._respond(
                writer, exc.status, f"claude-bottle egress guard: {exc.reason}\n".encode(), "text/plain", exc.reason
            )
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            entry.setdefault("reason", "client went away")
        except Exception:  # noqa: BLE001 - hostile input must never take the guard down: fail closed, on record
            traceback.print_exc()
            entry["decision"] = "deny"
            entry["reason"] = "internal error"
        finally:
            if "decision" in entry:
                entry["duration_ms"] = timer.ms()
                for key, value in entry.items():  # every string the agent could have shaped is redacted
                    if isinstance(value, str):
                        entry[key] = self.scanner.redact(value)
                self.audit.write(**entry)
            with contextlib.suppress(Exception):
                writer.close()
            self.connections -= 1

    async def _dispatch(
        self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, entry: dict[str, object]
    ) -> None:
        if req.method == "CONNECT":
            entry["kind"] = "connect"
            host, port = split_host_port(req.target, 443)
            entry.update(host=host, port=port)
            self._scan_host(host)
            decision = self._decide(host, port, entry)
            up_r, up_w = await self._open(host, port, decision, entry)
            try:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await self._relay(reader, writer, up_r, up_w, entry, inspect=host)
            finally:
                up_w.close()
            return
        if req.target.startswith("/"):
            if req.method == "GET" and req.target == HEALTH_PATH:
                body = json.dumps({"status": "ok", "bottle": self.policy.current().bottle}).encode() + b"\n"
                await self._respond(writer, 200, body, "application/json")
                return
            matched = self.secrets.match(req.target)
            if matched is None:
                entry.update(kind="local", path=req.target.split("?")[0])
                raise Refused(404, "not a proxy request or credential route")
            route, rest = matched
            entry.update(kind="route", route=route.name, host=route.host, port=route.port, path=rest.split("?")[0])
            await self._route(req, route, rest, reader, writer, entry)
            return
        url = urlsplit(req.target)
        if url.scheme != "http" or not url.netloc:
            raise Refused(400, "only http:// absolute URIs and CONNECT are proxied")
        host, port = split_host_port(url.netloc, 80)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        entry.update(host=host, port=port, path=url.path or "/")
        self._scan_host(host)
        hh = req.header("host")
        if hh is not None and split_host_port(hh, port)[0] != host:
            raise Refused(403, "host-header-mismatch")
        self._scan_request(req, path)
        body = await read_body(req, reader, writer)
        self._scan(body)
        decision = self._decide(host, port, entry)
        up_r, up_w = await self._open(host, port, decision, entry)
        authority = (f"[{host}]" if ":" in host else host) + ("" if port == 80 else f":{port}")
        # The Host header is always the checked host: another one could reach another vhost.
        lines = [
            f"{req.method} {path} HTTP/1.1",
            f"Host: {authority}",
            *req.forwarded_headers(),
            *([f"Content-Length: {len(body)}"] if body or req.method in ("POST", "PUT", "PATCH") else []),
            "Connection: close",
        ]
        await self._relay(reader, writer, up_r, up_w, entry, first=("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    # -- checks -----------------------------------------------------------------------------------
    def _scan(self, data: bytes | str) -> None:
        hit = self.scanner.find_bytes(data) if isinstance(data, bytes) else self.scanner.find(data)
        if hit is not None:
            raise Refused(403, hit.reason)

    def _scan_host(self, host: str) -> None:
        hit = self.scanner.find_host(host)
        if hit is not None:
            raise Refused(403, hit.reason)

    def _scan_request(self, req: Request, path: str, skip: Collection[str] = ()) -> None:
        self._scan(path)
        self._scan("\n".join(f"{k}: {v}" for k, v in req.headers if k.lower() not in skip))

    def _decide(self, host: str, port: int, entry: dict[str, object]) -> Decision:
        decision = self.policy.current().check(host, port)
        entry["decision"] = "allow" if decision.allowed else "deny"
        entry["reason"] = decision.reason
        if not decision.allowed:
            raise Refused(403, decision.reason)
        return decision

    async def _resolve(self, host: str, port: int) -> list[str]:
        if is_ip(host):
            return [host]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            raise Refused(502, f"cannot resolve {host}") from None
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def _open(
        self, host: str, port: int, decision: Decision | None, entry: dict[str, object], tls: bool = False
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        addrs = await self._resolve(host, port)
        allow_private = decision is None or (decision.rule is not None and decision.rule.private)
        usable = [a for a in addrs if allow_private or is_public_address(a)]
        if not usable:
            raise Refused(403, f"ssrf: {host} resolves to a non-public address ({addrs[0]})")
        last: Exception | None = None
        for addr in usable:  # connect to the very address that was checked: no second lookup
            try:
                conn = await asyncio.wait_for(
                    asyncio.open_connection(
                        addr, port, limit=CHUNK, ssl=self._ssl if tls else None, server_hostname=host if tls else None
                    ),
                    CONNECT_TIMEOUT,
                )
            except (TimeoutError, OSError) as exc:
                last = exc
                continue
            entry["addr"] = addr
            return conn
        raise Refused(502, f"cannot connect to {host}:{port} ({type(last).__name__})")

    # -- credential routes ------------------------------------------------------------------------
    async def _route(
        self,
        req: Request,
        route: Route,
        rest: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        entry: dict[str, object],
    ) -> None:
        # The agent's placeholder credential headers are replaced, so they are not scanned.
        self._scan_request(req, rest, skip=_CRED_HEADERS)
        body = await read_body(req, reader, writer)
        self._scan(body)
        entry.update(decision="allow", reason=f"credential route {route.name}")
        # The operator named this upstream: private addresses are fine, no allow rule needed.
        up_r, up_w = await self._open(route.host, route.port, None, entry, tls=route.scheme == "https")
        try:
            await self._route_exchange(req, route, rest, body, up_r, up_w, writer, entry)
        finally:
            up_w.close()

    async def _route_exchange(
        self,
        req: Request,
        route: Route,
        rest: str,
        body: bytes,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
        writer: asyncio.StreamWriter,
        entry: dict[str, object],
    ) -> None:
        authority = route.host if route.port in (80, 443) else f"{route.host}:{route.port}"
        lines = [
            f"{req.method} {route.base_path}{rest} HTTP/1.1",
            f"Host: {authority}",
            *req.forwarded_headers(drop=_CRED_HEADERS),
            f"{route.header}: {route.value}",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        up_w.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await up_w.drain()
        entry["bytes_up"] = len(body)
        try:
            head = await asyncio.wait_for(up_r.readuntil(b"\r\n\r\n"), 300)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise Refused(502, f"upstream {route.host} sent no response ({type(exc).__name__})") from None
        status_line, *resp_headers = head[:-4].decode("latin-1").split("\r\n")
        code = status_line.split(" ")[1] if status_line.count(" ") else ""
        entry["status"] = _number(code) or 0
        # One request per connection: tell the client so it never reuses a socket we are closing.
        kept = [h for h in resp_headers if h.split(":", 1)[0].strip().lower() not in ("connection", "keep-alive")]
        writer.write(("\r\n".join([status_line, *kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1"))
        down = 0
        while chunk := await up_r.read(CHUNK):  # streamed as it arrives: SSE is not buffered
            writer.write(chunk)
            down += len(chunk)
            await writer.drain()
        entry["bytes_down"] = down

    # -- relaying ---------------------------------------------------------------------------------
    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
        entry: dict[str, object],
        first: bytes = b"",
        inspect: str | None = None,
    ) -> None:
        counts = {"up": 0, "down": 0}
        refused: list[str] = []
        if first:
            up_w.write(first)
            counts["up"] += len(first)

        async def client_to_upstream() -> None:
            if first:
                # One checked request, then nothing more from the client: a pipelined second request
                # would go to the same upstream unscanned and unchecked.
                await up_w.drain()
                if up_w.can_write_eof():
                    up_w.write_eof()
                return
            if inspect is not None:
                buf = b""
                while True:
                    chunk = await asyncio.wait_for(reader.read(CHUNK), FIRST_BYTES_TIMEOUT)
                    buf += chunk
                    try:
                        why = inspect_tunnel(buf, inspect) if chunk else None
                    except LookupError:
                        if len(buf) <= MAX_HEAD:
                            continue
                        why = "first bytes too large"
                    if why is not None:
                        refused.append(why)
                        up_w.close()
                        writer.close()
                        return
                    break
                if buf:
                    up_w.write(buf)
                    counts["up"] += len(buf)
                    await up_w.drain()
            await pump(reader, up_w, "up")

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, key: str) -> None:
            while chunk := await src.read(CHUNK):
                dst.write(chunk)
                counts[key] += len(chunk)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()

        async def guarded(fn: Callable[[], object]) -> None:
            with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
                await fn()  # type: ignore[misc]

        try:
            await asyncio.gather(guarded(client_to_upstream), guarded(lambda: pump(up_r, writer, "down")))
        finally:
            entry["bytes_up"] = counts["up"]
            entry["bytes_down"] = counts["down"]
            if refused:
                entry["decision"] = "deny"
                entry["reason"] = refused[0]
            with contextlib.suppress(Exception):
                up_w.close()

    @staticmethod
    async def _respond(
        writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str, reason: str | None = None
    ) -> None:
        head = [
            f"HTTP/1.1 {status} {_PHRASES.get(status, 'OK' if status == 200 else 'Error')}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if reason:
            head.append(f"X-Claude-Bottle-Reason: {reason}")
        with contextlib.suppress(ConnectionError, OSError):
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
