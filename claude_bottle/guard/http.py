"""HTTP/1.1 as the guard reads it: a request's head parsed strictly (one reading, the one a server would
make, or a refusal), its body's framing, a body scanned piece by piece as it streams, and the refusals the
guard answers with. Standard library only, as all of the guard."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from claude_bottle.guard.dlp import Scanner
from claude_bottle.guard.policy import normalise_host

__all__ = ["Framing", "PushRefused", "Refused", "Request", "body_framing", "parse_head", "split_host_port"]

MAX_HEAD = 32 * 1024


MAX_BODY = 32 * 1024 * 1024


MAX_CHUNKS = 16384


CHUNK = 32 * 1024


SCAN_WINDOW = 4096  # bytes held back between body pieces, so a secret split across two is still seen


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
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class PushRefused(Refused):
    """A push refused with a receive-pack status report (git shows each ref's reason to the agent)."""

    def __init__(self, reason: str, report: bytes) -> None:
        super().__init__(200, reason)
        self.report = report


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


@dataclass(frozen=True)
class Framing:
    """How a request body is delimited, judged from the head alone (before any body byte is read)."""

    kind: str  # "none" | "length" | "chunked"
    length: int = 0


def body_framing(req: Request) -> Framing:
    te = req.header("transfer-encoding")
    cl = req.header("content-length")
    if te is not None and cl is not None:
        raise Refused(400, "both Content-Length and Transfer-Encoding")  # request smuggling shape
    if te is not None:
        if te.lower() != "chunked":
            raise Refused(400, "unsupported Transfer-Encoding")
        return Framing("chunked")
    if cl is None:
        return Framing("none")
    length = _number(cl)
    if length is None:
        raise Refused(400, "bad Content-Length")
    if length > MAX_BODY:
        raise Refused(413, "request body over 32 MiB")
    return Framing("length", length) if length else Framing("none")


class BodyScan:
    """Scans a body piece by piece before it leaves, holding back the last SCAN_WINDOW bytes so a secret
    split across two pieces is still seen whole. Work per piece is bounded (window + piece)."""

    def __init__(self, scanner: Scanner) -> None:
        self.scanner = scanner
        self.tail = b""

    def feed(self, piece: bytes) -> bytes:
        data = self.tail + piece
        hit = self.scanner.find_bytes(data)
        if hit is not None:
            raise Refused(403, hit.reason)
        cut = max(0, len(data) - SCAN_WINDOW)
        self.tail = data[cut:]
        return data[:cut]

    def finish(self) -> bytes:
        rest, self.tail = self.tail, b""
        return rest
