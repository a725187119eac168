"""The audit chain, exactly: how a line is hashed, where the last line is found, what an operator line
looks like, and what `verify` counts and says (issue 15, item 5)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from claude_bottle.guard.audit import GENESIS, append_chained, last_line_hash, line_hash, verify_chain


def test_a_line_is_hashed_without_its_newlines_only() -> None:
    assert line_hash(b'{"a":1}\n') == hashlib.sha256(b'{"a":1}').hexdigest()[:32]
    assert line_hash(b' {"a":1} \n') == hashlib.sha256(b' {"a":1} ').hexdigest()[:32]  # spaces are content
    assert line_hash(b'X{"a":1}X') == hashlib.sha256(b'X{"a":1}X').hexdigest()[:32]


def test_the_last_line_is_found_exactly(tmp_path: Path) -> None:
    path = tmp_path / "log"
    for content, expected in (
        (b"", GENESIS),
        (b"\n", GENESIS),  # a file of one empty line has no last line
        (b"x", line_hash(b"x")),  # one byte: a line
        (b"a\nb\n", line_hash(b"b")),
        (b"a\nb\n\n", line_hash(b"b")),
        (b"a\nb X\n", line_hash(b"b X")),
        (b"a\nb\nc", line_hash(b"c")),  # a cut line counts as it is
    ):
        path.write_bytes(content)
        fd = os.open(path, os.O_RDONLY)
        try:
            assert last_line_hash(fd, len(content)) == expected, content
        finally:
            os.close(fd)


def test_an_operator_line_is_compact_chained_and_private(tmp_path: Path) -> None:
    path = tmp_path / "egress.jsonl"
    old = os.umask(0o022)
    try:
        append_chained(path, {"kind": "operator", "action": "grant", "what": ["a.test"]})
        append_chained(path, {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first, second = path.read_bytes().splitlines()
    assert first == b'{"prev":"' + GENESIS.encode() + b'","kind":"operator","action":"grant","what":["a.test"]}'
    assert second == b'{"prev":"' + line_hash(first).encode() + b'"}'  # an empty record: prev alone
    assert verify_chain(path) == (2, 0, [])


def test_verify_counts_and_names_each_break(tmp_path: Path) -> None:
    path = tmp_path / "egress.jsonl"
    path.write_text('{"kind":"old"}\n{"kind":"older"}\n')  # written before chaining began
    append_chained(path, {"kind": "a"})
    append_chained(path, {"kind": "b"})
    append_chained(path, {"kind": "c"})
    assert verify_chain(path) == (5, 2, [])
    lines = path.read_text().splitlines()
    edited = [*lines[:3], lines[3].replace('"b"', '"B"'), *lines[4:]]
    path.write_text("\n".join(edited) + "\n")
    assert verify_chain(path) == (
        5,
        2,
        ["line 5 does not follow line 4: a line was edited, removed or inserted between them"],
    )
    path.write_text("\n".join(lines[:3] + lines[4:]) + "\n")  # one removed
    assert verify_chain(path)[2] == [
        "line 4 does not follow line 3: a line was edited, removed or inserted between them"
    ]
    path.write_text("\n".join([*lines[:3], '{"kind":"inserted"}', *lines[3:]]) + "\n")
    assert verify_chain(path) == (6, 2, ["line 4 carries no chain: a line was inserted or rewritten there"])
    path.write_text("\n".join([*lines[:3], '{"kind":"cut', *lines[3:]]) + "\n")
    count, unchained, problems = verify_chain(path)
    assert (count, unchained) == (6, 2) and problems[0] == "line 4 is not whole JSON (cut by a full disk, or edited)"
    path.write_text("")
    assert verify_chain(path) == (0, 0, [])
    path.write_text(json.dumps({"kind": "only"}) + "\n")
    assert verify_chain(path) == (1, 1, [])
