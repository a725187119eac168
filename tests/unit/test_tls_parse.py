"""The ClientHello reader, byte for byte: hand-built hellos with every field's length varied, so that an
off-by-one anywhere in the parser reads the wrong bytes (and a test sees it)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claude_bottle.guard.tls import MAX_RECORD, NEED_MORE, client_hello_sni

from .guardkit import client_hello


def ext(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def sni_ext(*names: tuple[int, bytes]) -> bytes:
    entries = b"".join(t.to_bytes(1, "big") + len(n).to_bytes(2, "big") + n for t, n in names)
    return ext(0, len(entries).to_bytes(2, "big") + entries)


def hello(
    extensions: bytes | None,
    *,
    session: bytes = b"",
    ciphers: bytes = b"\x13\x01",
    compression: bytes = b"\x00",
) -> bytes:
    body = b"\x03\x03" + b"r" * 32
    body += len(session).to_bytes(1, "big") + session
    body += len(ciphers).to_bytes(2, "big") + ciphers
    body += len(compression).to_bytes(1, "big") + compression
    if extensions is not None:
        body += len(extensions).to_bytes(2, "big") + extensions
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs


@pytest.mark.parametrize("session", [b"", b"s", b"s" * 32])
@pytest.mark.parametrize("ciphers", [b"\x13\x01", b"\x13\x01\x13\x02\x13\x03", b"\x00\xff" * 40])
@pytest.mark.parametrize("compression", [b"\x00", b"\x01\x00", b"\x00" * 5])
def test_the_sni_is_found_whatever_the_lengths_before_it(session: bytes, ciphers: bytes, compression: bytes) -> None:
    before = ext(10, b"\x00\x02\x00\x1d") + ext(43, b"\x02\x03\x04")
    h = hello(before + sni_ext((0, b"a.example")) + ext(16, b"\x00\x03\x02h2"), session=session, ciphers=ciphers,
              compression=compression)  # fmt: skip
    assert client_hello_sni(h) == "a.example"


@pytest.mark.parametrize(
    ("extensions", "expected"),
    [
        (None, None),  # no extensions at all
        (b"", None),  # an empty extension list
        (ext(10, b"\x00\x02\x00\x1d"), None),  # extensions, none of them the server name
        (sni_ext((0, b"x.test")) + sni_ext((0, b"y.test")), "x.test"),  # the first one counts
        (sni_ext((1, b"other"), (0, b"z.test")), "z.test"),  # a non-host-name entry is skipped
        (sni_ext((1, b"other")), None),  # only non-host-name entries
        (sni_ext((0, b"")), ""),  # an empty name is a name (and matches no host)
        (sni_ext((0, b"caf\xc3\xa9.test")), "caf\ufffd\ufffd.test"),  # non-ASCII is not silently dropped
    ],
)
def test_extensions_are_walked_exactly(extensions: bytes | None, expected: str | None) -> None:
    assert client_hello_sni(hello(extensions)) == expected


def test_record_framing() -> None:
    h = hello(sni_ext((0, b"a.example")))
    for cut in range(len(h)):
        assert client_hello_sni(h[:cut]) is NEED_MORE, cut  # any prefix: wait for the rest
    assert client_hello_sni(h + b"trailing bytes") == "a.example"  # what follows the record is not read
    with pytest.raises(ValueError):
        client_hello_sni(b"\x16\x03\x01\x00\x00")  # an empty record holds no ClientHello
    with pytest.raises(ValueError):
        client_hello_sni(b"\x16\x03\x01" + (MAX_RECORD + 1).to_bytes(2, "big"))
    assert client_hello_sni(b"\x16\x03\x01" + MAX_RECORD.to_bytes(2, "big")) is NEED_MORE  # the largest allowed
    with pytest.raises(ValueError):
        client_hello_sni(b"\x17" + h[1:])  # not a handshake record
    with pytest.raises(ValueError):
        client_hello_sni(h[:5] + b"\x02" + h[6:])  # a handshake, but not a ClientHello


def test_a_hello_split_over_records_is_refused() -> None:
    h = hello(sni_ext((0, b"a.example")))
    body = h[5:]
    first = b"\x16\x03\x01" + (20).to_bytes(2, "big") + body[:20]
    with pytest.raises(ValueError, match="fragmented"):
        client_hello_sni(first + b"\x16\x03\x01" + (len(body) - 20).to_bytes(2, "big") + body[20:])


def test_a_record_claiming_less_than_its_hello_is_never_read_past() -> None:
    h = hello(sni_ext((0, b"a.example")))
    for claim in range(4, len(h) - 5):
        cut = h[:3] + claim.to_bytes(2, "big") + h[5 : 5 + claim]
        try:
            sni = client_hello_sni(cut + b"\x00" * 64)
        except ValueError:
            continue
        assert sni in (None, "a.example")  # never a name read from bytes outside the record


@given(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,3}", fullmatch=True))
def test_real_client_hellos_round_trip(name: str) -> None:
    if name.replace(".", "").isdigit():
        return  # an IP literal: Python sends no SNI
    assert client_hello_sni(client_hello(name)) == name


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x17\x03\x01\x00\x05hello", "not a TLS handshake record"),
        (b"\x16\x03\x01" + (MAX_RECORD + 1).to_bytes(2, "big"), "oversized TLS record"),
        (b"\x16\x03\x01\x00\x03\x01\x00\x00", "not a ClientHello"),  # shorter than a handshake header
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not a ClientHello"),  # a handshake of another type
        (b"\x16\x03\x01\x00\x04\x01\x00\x00\x00", "truncated ClientHello"),  # a header and nothing after it
        (b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x03", "truncated ClientHello"),  # one byte of the version
    ],
)
def test_each_malformation_is_named(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        client_hello_sni(data)


def test_a_handshake_length_past_16_bits_is_read_whole() -> None:
    """All three bytes of the handshake length count: a first byte of 1 claims 64 KiB more than the record."""
    h = bytearray(hello(sni_ext((0, b"a.example"))))
    h[6] = 1
    with pytest.raises(ValueError, match=r"^fragmented ClientHello$"):
        client_hello_sni(bytes(h))


@pytest.mark.parametrize(
    "field",
    ["extensions", "extension", "names", "name"],
)
def test_a_length_running_one_byte_past_its_container_is_malformed(field: str) -> None:
    """Every length-prefixed field is bounded by what contains it (the hello by its handshake length, an
    extension by the list, a name by its entry list): one length grown by one runs past its container, and
    the record carries one more byte after the hello, so a reader that overran would read on."""
    name = b"a.example"
    entries = b"\x00" + len(name).to_bytes(2, "big") + name
    names = len(entries).to_bytes(2, "big") + entries
    extension = b"\x00\x00" + len(names).to_bytes(2, "big") + names
    body = b"\x03\x03" + b"r" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += len(extension).to_bytes(2, "big") + extension
    at = {  # offset of each length field in body, its size, and its value
        "extensions": (41, 2, len(extension)),
        "extension": (45, 2, len(names)),
        "names": (47, 2, len(entries)),
        "name": (50, 2, len(name)),
    }
    offset, size, value = at[field]
    assert int.from_bytes(body[offset : offset + size], "big") == value  # the map above is right
    grown = bytearray(body)
    grown[offset : offset + size] = (value + 1).to_bytes(size, "big")
    hs = b"\x01" + len(body).to_bytes(3, "big") + bytes(grown)
    record = hs + b"\x00"  # the byte a reader running past the hello would take
    data = b"\x16\x03\x01" + len(record).to_bytes(2, "big") + record
    intact = b"\x01" + len(body).to_bytes(3, "big") + body
    assert client_hello_sni(b"\x16\x03\x01" + len(intact).to_bytes(2, "big") + intact) == "a.example"
    with pytest.raises(ValueError, match=r"^truncated ClientHello$"):
        client_hello_sni(data)


def test_what_follows_the_hello_in_its_record_is_not_read() -> None:
    h = hello(sni_ext((0, b"a.example")))
    hs = h[5:]
    padded = b"\x16\x03\x01" + (len(hs) + 2).to_bytes(2, "big") + hs + b"\x00\x09"
    assert client_hello_sni(padded) == "a.example"
    bare = hello(None)[5:]  # no extensions: two bytes after it must not be taken for an extension list
    assert client_hello_sni(b"\x16\x03\x01" + (len(bare) + 2).to_bytes(2, "big") + bare + b"\x00\x00") is None
