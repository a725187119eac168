"""Which spellings of a secret the scanner looks for, checked against an oracle that knows nothing of the
scanner's arithmetic: a base64 character belongs to the secret's spelling when it comes out the same
whatever bytes surround the secret (all-zero or all-one neighbours), and the longest such run is the one
to look for. Too short a run misses leaks; one character too many misses them too (it depends on the
neighbour)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claude_bottle.guard.dlp import MIN_SECRET, Scanner, encodings


def stable_run(encode: Callable[[bytes], bytes], raw: bytes, pad: int) -> str:
    a = encode(b"\x00" * pad + raw + b"\x00\x00").decode()
    b = encode(b"\xff" * pad + raw + b"\xff\xff").decode()
    best, run = "", ""
    for x, y in zip(a, b, strict=True):
        run = run + x if x == y else ""
        best = max(best, run, key=len)
    return best


def oracle(secret: str) -> set[str]:
    raw = secret.encode()
    out = {secret, quote(secret, safe=""), raw.hex(), raw.hex().upper()}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        out.update(stable_run(encode, raw, pad) for pad in range(3))
    return {e for e in out if len(e) >= MIN_SECRET}


@pytest.mark.parametrize(
    "secret",
    [
        "abcdefgh",  # exactly the shortest secret looked for
        "s3cr3t-value-1234",
        "a/b+c=d?e&f g",  # URL-quoting must quote the slash too
        "\u00e9t\u00e9-secret\u2603",  # not ASCII
        "token-ending-in-W",  # base64 cores that end in letters the padding strip must not touch
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    ],
)
def test_the_spellings_are_exactly_the_stable_ones(secret: str) -> None:
    assert encodings(secret) == oracle(secret)


@given(st.text(min_size=1, max_size=40))
def test_the_spellings_are_exactly_the_stable_ones_for_any_text(secret: str) -> None:
    assert encodings(secret) == oracle(secret)


def test_a_secret_shorter_than_the_minimum_is_not_looked_for() -> None:
    assert "a" * (MIN_SECRET - 1) not in encodings("a" * (MIN_SECRET - 1))
    assert all(len(e) >= MIN_SECRET for e in encodings("a" * (MIN_SECRET - 1)))
    assert "a" * MIN_SECRET in encodings("a" * MIN_SECRET)


@given(st.binary(max_size=5), st.binary(max_size=5), st.sampled_from([base64.b64encode, base64.urlsafe_b64encode]))
def test_a_secret_base64_encoded_among_any_bytes_is_found(
    before: bytes, after: bytes, encode: Callable[[bytes], bytes]
) -> None:
    secret = "ghp_" + "A1b2C3d4" * 5
    scanner = Scanner(secrets=[secret])
    assert scanner.find_bytes(encode(before + secret.encode() + after))
