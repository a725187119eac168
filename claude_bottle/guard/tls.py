"""Just enough TLS to read the server name (SNI) from a ClientHello."""

from __future__ import annotations

__all__ = ["NEED_MORE", "client_hello_sni"]

NEED_MORE = object()
MAX_RECORD = 16384 + 2048


class _Reader:
    """Length-prefixed fields, read strictly: a length that runs past its container is malformed."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated ClientHello")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def field(self, size: int) -> _Reader:
        """A field prefixed by its length in `size` bytes."""
        return _Reader(self.take(self.number(size)))

    def done(self) -> bool:
        return self.pos >= len(self.data)


def client_hello_sni(buf: bytes) -> object:
    """SNI as str, None when the hello carries none, NEED_MORE if incomplete; ValueError if malformed."""
    if len(buf) < 5:
        return NEED_MORE
    if buf[0] != 0x16:
        raise ValueError("not a TLS handshake record")
    rec_len = int.from_bytes(buf[3:5], "big")
    if rec_len > MAX_RECORD:
        raise ValueError("oversized TLS record")
    if len(buf) < 5 + rec_len:
        return NEED_MORE
    body = buf[5 : 5 + rec_len]
    if len(body) < 4 or body[0] != 0x01:
        raise ValueError("not a ClientHello")
    hs_len = int.from_bytes(body[1:4], "big")
    if len(body) < 4 + hs_len:
        # A ClientHello split over several records: rare, and refusing it fails closed.
        raise ValueError("fragmented ClientHello")
    hello = _Reader(body[4 : 4 + hs_len])
    hello.take(2 + 32)  # client_version, random
    hello.field(1)  # session id
    hello.field(2)  # cipher suites
    hello.field(1)  # compression methods
    if hello.done():
        return None  # a hello without extensions
    extensions = hello.field(2)
    while not extensions.done():
        ext_type = extensions.number(2)
        data = extensions.field(2)
        if ext_type == 0:  # server_name: a list of (type, name)
            names = data.field(2)
            while not names.done():
                name_type = names.number(1)
                name = names.take(names.number(2))
                if name_type == 0:
                    return name.decode("ascii", "replace")
            return None
    return None
