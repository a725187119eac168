"""Just enough TLS to read the server name (SNI) from a ClientHello."""

from __future__ import annotations

__all__ = ["NEED_MORE", "client_hello_sni"]

NEED_MORE = object()
MAX_RECORD = 16384 + 2048


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
    hello = body[4 : 4 + hs_len]
    if len(hello) < hs_len:
        # A ClientHello split over several records: rare, and refusing it fails closed.
        raise ValueError("fragmented ClientHello")
    p = 2 + 32  # client_version, random
    p += 1 + hello[p]  # session id
    p += 2 + int.from_bytes(hello[p : p + 2], "big")  # cipher suites
    p += 1 + hello[p]  # compression methods
    if p + 2 > len(hello):
        return None
    end = p + 2 + int.from_bytes(hello[p : p + 2], "big")
    p += 2
    while p + 4 <= end:
        ext_type = int.from_bytes(hello[p : p + 2], "big")
        ext_len = int.from_bytes(hello[p + 2 : p + 4], "big")
        data = hello[p + 4 : p + 4 + ext_len]
        if ext_type == 0:  # server_name: list of (type, len, name)
            q = 2
            while q + 3 <= len(data):
                name_type = data[q]
                name_len = int.from_bytes(data[q + 1 : q + 3], "big")
                if name_type == 0:
                    return data[q + 3 : q + 3 + name_len].decode("ascii", "replace")
                q += 3 + name_len
            return None
        p += 4 + ext_len
    return None
