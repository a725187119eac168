"""A record you can verify (issue 15, item 5): every audit line names the hash of the one before it; the
guard and the CLI's operator lines share one chain; `verify` says where it breaks; `report` sums a run."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_bottle.backend import _BACKENDS
from claude_bottle.bottle.state import bottle_home, list_state_dirs
from claude_bottle.cli import main
from claude_bottle.guard.audit import GENESIS, AuditLog, append_chained, line_hash, verify_chain
from claude_bottle.manifest.trust import trust_file

from .fakes import FakeBackend


def write_log(path: Path, n: int) -> None:
    log = AuditLog(path, bottle="t-abcde")
    for i in range(n):
        assert log.write(kind="probe", n=i)
        if i == 2:  # the CLI appends an operator line between the guard's
            append_chained(path, {"kind": "operator", "action": "grant"})
    log.close()


def test_each_line_names_the_hash_of_the_one_before(tmp_path: Path) -> None:
    path = tmp_path / "egress.jsonl"
    write_log(path, 5)
    raw = path.read_bytes().splitlines()
    assert json.loads(raw[0])["prev"] == GENESIS
    for before, line in itertools.pairwise(raw):
        assert json.loads(line)["prev"] == line_hash(before)
    assert [json.loads(x).get("n", "op") for x in raw] == [0, 1, 2, "op", 3, 4]
    assert verify_chain(path) == (6, 0, [])
    # A guard started again on the same log continues its chain.
    log = AuditLog(path, bottle="t-abcde")
    log.write(kind="probe", n=5)
    log.close()
    assert verify_chain(path) == (7, 0, [])


@pytest.mark.parametrize("change", ["edit", "remove", "insert", "reorder"])
def test_verify_says_where_the_record_was_changed(tmp_path: Path, change: str) -> None:
    path = tmp_path / "egress.jsonl"
    write_log(path, 6)
    lines = path.read_text().splitlines()
    if change == "edit":
        lines[2] = lines[2].replace('"n":2', '"n":20')
        where = "line 4 does not follow line 3"
    elif change == "remove":
        del lines[2]
        where = "line 3 does not follow line 2"
    elif change == "insert":
        lines.insert(2, '{"kind":"probe","n":99}')
        where = "line 3 carries no chain"
    else:
        lines[1], lines[2] = lines[2], lines[1]
        where = "line 2 does not follow line 1"
    path.write_text("\n".join(lines) + "\n")
    _count, _unchained, problems = verify_chain(path)
    assert problems and problems[0].startswith(where), problems


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setitem(_BACKENDS, "fake", "tests.unit.fakes:FakeBackend")
    FakeBackend.reset()
    d = tmp_path / "proj"
    d.mkdir()
    (d / "claude-bottle.toml").write_text('[bottles.default]\nbackend = "fake"\n[agents.claude]\n')
    trust_file(d / "claude-bottle.toml", home=bottle_home())
    monkeypatch.chdir(d)
    yield d
    FakeBackend.reset()


def test_verify_and_report_on_a_bottle(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["start", "claude", "--detach"]) == 0
    (sd,) = list_state_dirs()
    log = AuditLog(sd.audit_path, bottle=sd.slug)
    log.write(kind="http", host="api.example.com", decision="allow")
    log.write(kind="http", host="evil.example", decision="deny", reason="not allowed")
    log.close()
    assert main(["grant", sd.slug, "--egress", "docs.example.com"]) == 0  # an operator line, chained
    capsys.readouterr()
    assert main(["verify", sd.slug]) == 0
    assert capsys.readouterr().out.startswith("intact: 3 lines")
    assert main(["report", sd.slug, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["egress"] == {"api.example.com": {"allow": 1}, "evil.example": {"deny": 1}}
    assert rep["grants"] == ["docs.example.com"] and rep["audit"]["intact"] is True
    assert set(rep["ran_with"]) == {"bottle spec", "policy", "manifest"}
    text = sd.audit_path.read_text().replace("evil.example", "good.example")
    sd.audit_path.write_text(text)
    assert main(["verify", sd.slug]) == 1
    assert "BROKEN: line 3 does not follow line 2" in capsys.readouterr().out
