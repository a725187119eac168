"""The capability desk itself, without the guard around it: each refusal says exactly why, each bound is
where it says, and what it records is the compact, private, well-formed line the host reads."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
from datetime import datetime
from pathlib import Path

import pytest

from claude_bottle.guard import capability
from claude_bottle.guard.capability import DEFAULT_WAIT, MAX_BODY, MAX_REASON, MAX_WAIT, Desk, Invalid, parse_name

ID = re.compile(r"r-[0-9a-f]{8}")


def desk(tmp: Path | None, *, limit: int = 20, decisions: dict[str, tuple[str, str]] | None = None) -> Desk:
    path = None if tmp is None else tmp / "requests.jsonl"
    return Desk(path, lambda s: s.replace("SECRET", "[redacted]"), lambda: decisions or {}, limit=limit)


def refused(message: str) -> pytest.RaisesContext[Invalid]:
    return pytest.raises(Invalid, match=f"^{re.escape(message)}$")


# -- names --------------------------------------------------------------------------------------------


def test_an_unknown_kind_is_named_cut_short_with_the_kinds_listed() -> None:
    with refused(f"unknown kind {'k' * 20!r}: use one of apt, pip, npm, egress"):
        parse_name("k" * 30, "x")


@pytest.mark.parametrize(
    ("kind", "what"),
    [("apt", "an apt package name"), ("pip", "a pip name"), ("npm", "a npm name"), ("egress", "a host[:port]")],
)
def test_a_bad_name_is_named_cut_short(kind: str, what: str) -> None:
    name = "$" + "a" * 80
    with refused(f"{kind}:{name[:60]!r} is not {what} (letters, digits and . _ + - only)"):
        parse_name(kind, name)


@pytest.mark.parametrize("port", [1, 443, 65535])
def test_every_real_port_is_a_port(port: int) -> None:
    assert parse_name("egress", f"h.test:{port}") == f"h.test:{port}"


@pytest.mark.parametrize("port", [0, 65536, 99999])
def test_a_port_out_of_range_is_refused(port: int) -> None:
    name = "a" * 62 + f".example:{port}"
    with refused(f"egress:{name[:60]}: the port must be 1-65535"):
        parse_name("egress", name)


# -- requests -----------------------------------------------------------------------------------------


def test_a_bottle_without_a_requests_file_takes_none(tmp_path: Path) -> None:
    d = desk(None)
    with refused("this bottle takes no capability requests"):
        d.submit(b"kind=pip&name=rich")
    with refused("this bottle takes no capability requests"):
        d.ask("h.test", 443, "not allowed")


def test_the_body_bound_is_exact(tmp_path: Path) -> None:
    d = desk(tmp_path)
    at_bound = b"kind=" + b"k" * (MAX_BODY - 5)
    assert len(at_bound) == MAX_BODY
    with refused(f"unknown kind {'k' * 20!r}: use one of apt, pip, npm, egress"):  # judged, not refused for size
        d.submit(at_bound)
    with refused(f"request over {MAX_BODY} bytes"):
        d.submit(at_bound + b"k")


@pytest.mark.parametrize(
    "body",
    [
        b"kind=pip&name=rich&stray",  # a field without '=': strict parsing refuses it
        b"&".join(b"f%d=1" % i for i in range(9)),  # more fields than the form has
        b"kind=pip&name=\xff",  # not UTF-8
    ],
)
def test_what_is_not_the_form_is_refused_as_such(tmp_path: Path, body: bytes) -> None:
    with refused("not a form-encoded request (kind, name, reason, wait)"):
        desk(tmp_path).submit(body)


@pytest.mark.parametrize(
    "body", [b"kind=pip&name=rich&kind=apt", b"kind=pip&name=rich&extra=1", b"a=1&b=2&c=3&d=4&e=5&f=6&g=7&h=8"]
)
def test_only_the_four_fields_each_once(tmp_path: Path, body: bytes) -> None:
    with refused("fields: kind, name, reason, wait (each once)"):
        desk(tmp_path).submit(body)


def test_a_missing_kind_or_name_is_judged_as_empty(tmp_path: Path) -> None:
    d = desk(tmp_path)
    with refused("unknown kind '': use one of apt, pip, npm, egress"):
        d.submit(b"name=rich")
    with refused("pip:'' is not a pip name (letters, digits and . _ + - only)"):
        d.submit(b"kind=pip")


def test_the_reason_is_bounded_cleaned_and_redacted(tmp_path: Path) -> None:
    d = desk(tmp_path)
    req, _ = d.submit(b"kind=pip&name=rich")
    assert req.reason == ""  # none given
    req, _ = d.submit(b"kind=pip&name=rich&reason=" + b"r" * MAX_REASON)
    assert req.reason == "r" * MAX_REASON  # the bound itself is allowed
    with refused(f"the reason is over {MAX_REASON} characters"):
        d.submit(b"kind=pip&name=rich&reason=" + b"r" * (MAX_REASON + 1))
    req, _ = d.submit(b"kind=pip&name=rich&reason=a%00b%1bc%7fd%C2%85e+SECRET")
    assert req.reason == "a b c d e [redacted]"  # each control character becomes one space


@pytest.mark.parametrize(
    ("wait", "expected"), [(None, DEFAULT_WAIT), ("-5", 0.0), ("0.5", 0.5), ("12", 12.0), ("99999", MAX_WAIT)]
)
def test_the_wait_is_bounded(tmp_path: Path, wait: str | None, expected: float) -> None:
    body = b"kind=egress&name=h.test" + (b"" if wait is None else b"&wait=" + wait.encode())
    assert desk(tmp_path).submit(body)[1] == expected


def test_a_wait_that_is_no_number_is_refused(tmp_path: Path) -> None:
    with refused("wait: a number of seconds"):
        desk(tmp_path).submit(b"kind=egress&name=h.test&wait=soon")


def test_the_limit_counts_every_request_once(tmp_path: Path) -> None:
    d = desk(tmp_path, limit=3)
    assert d.count == 0
    d.submit(b"kind=pip&name=rich")
    assert d.count == 1
    d.ask("a.test", 443, "not allowed")
    assert d.count == 2
    d.ask("a.test", 443, "not allowed")  # the same pending destination: the same request, not a new one
    assert d.count == 2
    d.ask("b.test", 443, "not allowed")
    assert d.count == 3
    with refused("this bottle has made its 3 requests: ask the operator directly"):
        d.submit(b"kind=pip&name=rich")
    with refused("this bottle has made its 3 requests"):
        d.ask("c.test", 443, "not allowed")
    assert d.count == 3
    assert desk(tmp_path, limit=3).count == 3  # a new generation of the guard counts what is on file


def test_an_ask_takes_the_last_request_the_limit_allows(tmp_path: Path) -> None:
    d = desk(tmp_path, limit=1)
    assert d.ask("a.test", 443, "x").name == "a.test:443"
    with refused("this bottle has made its 1 requests"):
        d.ask("b.test", 443, "x")


def test_what_is_recorded_is_one_compact_private_line_per_request(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        d = desk(tmp_path)
        req, _ = d.submit(b"kind=npm&name=left-pad&reason=SECRET+please")
        asked = d.ask("h.test", 8443, "host not in allow list SECRET")
    finally:
        os.umask(old)
    path = tmp_path / "requests.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the host reads it; no one else
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    for line, r in zip(lines, (req, asked), strict=True):
        rec = json.loads(line)
        assert line == json.dumps(rec, separators=(",", ":"))  # compact, like the audit log
        assert set(rec) == {"time", "id", "kind", "name", "reason"}
        assert (rec["id"], rec["kind"], rec["name"], rec["reason"]) == (r.id, r.kind, r.name, r.reason)
        assert ID.fullmatch(rec["id"])
        assert datetime.fromisoformat(rec["time"]).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert (asked.kind, asked.name, asked.reason) == (
        "egress",
        "h.test:8443",
        "ask mode: host not in allow list [redacted]",
    )
    assert req.reason == "[redacted] please"


# -- answers ------------------------------------------------------------------------------------------


def test_the_answer_is_the_operators_or_a_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(capability.time, "monotonic", lambda: now[0])
    naps: list[float] = []

    async def nap(seconds: float) -> None:
        naps.append(seconds)
        now[0] += seconds
        if len(naps) > 100:
            raise AssertionError("the wait never ended")

    decisions: dict[str, tuple[str, str]] = {}
    d = desk(tmp_path, decisions=decisions)
    d.decisions = lambda: decisions
    req, _ = d.submit(b"kind=egress&name=h.test")
    assert asyncio.run(d.answer(req, 0.0, nap)) == ("timeout", "")  # no time to wait: no nap at all
    assert naps == []
    assert asyncio.run(d.answer(req, 1.0, nap)) == ("timeout", "")
    assert naps == [0.2] * 5  # looked at five times a second, and no more once the time is up
    decisions[req.id] = ("grant", "ok")
    assert asyncio.run(d.answer(req, 1.0, nap)) == ("grant", "ok")
