"""The audit log when writing fails: a refused write or a cut line makes the guard refuse new allows, says
so once on stderr, keeps every later line whole, and comes back once space returns (issue 10)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import time
from pathlib import Path

import pytest

from claude_bottle.guard.audit import AuditLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Disk:
    """os.write and fallocate as a disk that can be full."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, log: AuditLog) -> None:
        self.full = False
        self.cut: int | None = None
        real_write, real_falloc = os.write, log._fallocate
        assert real_falloc is not None  # tmp_path's filesystem reserves

        def write(fd: int, data: bytes) -> int:
            if self.full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data[: self.cut] if self.cut else data)

        def fallocate(fd: int, mode: int, off: int, n: int) -> int:
            if self.full:
                ctypes.set_errno(errno.ENOSPC)
                return -1
            return int(real_falloc(fd, mode, off, n))

        monkeypatch.setattr(os, "write", write)
        log._fallocate = fallocate


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(time, "monotonic", c)
    return c


def test_a_refused_write_fails_closed_says_so_once_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], clock: Clock
) -> None:
    log = AuditLog(tmp_path / "egress.jsonl", bottle="t-abcde")
    disk = Disk(monkeypatch, log)
    assert log.write(kind="probe", n=0) and log.can_record()
    disk.full = True
    assert log.write(kind="probe", n=1) is False
    assert log.write(kind="probe", n=2) is False
    assert log.failed and not log.can_record()
    err = capsys.readouterr().err
    assert err == "claude-bottle guard: audit log write failed (No space left on device): refusing new requests\n"
    disk.full = False
    clock.now += 0.5
    assert not log.can_record()  # looked at again at most once a second
    clock.now += 0.6
    assert log.can_record() and not log.failed  # space is back: allows resume
    assert log.write(kind="probe", n=3)
    got = [json.loads(x) for x in (tmp_path / "egress.jsonl").read_text().splitlines()]
    assert [ln["n"] for ln in got] == [0, 3] and {ln["bottle"] for ln in got} == {"t-abcde"}


def test_a_cut_line_is_followed_by_whole_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], clock: Clock
) -> None:
    log = AuditLog(tmp_path / "egress.jsonl", bottle="t-abcde")
    disk = Disk(monkeypatch, log)
    disk.cut = 10
    assert log.write(kind="probe", n=1) is False
    assert log.failed
    assert "audit log write failed (short write)" in capsys.readouterr().err
    disk.cut = None
    assert log.write(kind="probe", n=2)
    assert log.write(kind="probe", n=3)
    text = (tmp_path / "egress.jsonl").read_text()
    cut, *whole = text.split("\n")
    assert len(cut) == 10 and whole[-1] == ""
    assert [json.loads(x)["n"] for x in whole[:-1]] == [2, 3]  # the next line starts on a fresh line
    assert "\n\n" not in text  # ... and only one newline is added, once


def test_lines_are_compact_json(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "egress.jsonl", bottle="t-abcde")
    assert log.line({"kind": "x", "a": [1, 2]}).endswith(b',"bottle":"t-abcde","kind":"x","a":[1,2]}\n')


def test_a_line_admitted_is_taken_from_the_budget(tmp_path: Path, clock: Clock) -> None:
    log = AuditLog(tmp_path / "egress.jsonl", bottle="t-abcde", rate=0.0, burst=800)
    assert log.admit("proxy") and log.admit("proxy")  # 2 x 400 bytes by default
    assert not log.admit("proxy")
    assert not log.budgeted("proxy", ("allow", "x"), kind="x")  # over budget: counted, not written
    assert log.budgets["proxy"].suppressed[("allow", "x")] == 1


def test_without_a_reserve_a_failed_log_stays_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], clock: Clock
) -> None:
    """On a filesystem that cannot reserve blocks nothing shows that space came back: the guard keeps
    refusing new allows (a restart, after the operator frees space, brings it back)."""
    log = AuditLog(tmp_path / "egress.jsonl", bottle="t-abcde")
    log._fallocate = None
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    assert log.write(kind="probe", n=1) is False
    monkeypatch.setattr(os, "write", real_write)
    for _ in range(3):
        clock.now += 2.0
        assert not log.can_record() and log.failed
    assert "refusing new requests" in capsys.readouterr().err
