"""State helpers, exactly: sizes, summaries, owners that are gone or reused, snapshots' budget and order,
slug prefixes, sparse copies (mutation testing showed where the suite was loose)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from claude_bottle.bottle import state as state_mod
from claude_bottle.bottle.state import (
    BottleRecord,
    StateDir,
    StateSummary,
    _copy_sparse,
    human_size,
    pid_alive,
    process_started,
    resolve_slug,
)
from claude_bottle.errors import NotFoundError


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (1024 * 1024, "1.0 MiB"),
        (5 * 1024**3, "5.0 GiB"),
        (3 * 1024**4, "3072.0 GiB"),
    ],
)
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text


def test_describe_says_what_removal_loses() -> None:
    s = StateSummary("claude-abcde", Path("/x"), "crashed", True, True, True, "crash", 2048)
    assert (
        s.describe() == "claude-abcde [crashed] 2.0 KiB: resumable, transcript, rebuilt Dockerfile, .preserve (crash)"
    )
    bare = StateSummary("claude-abcde", Path("/x"), "stopped", False, False, False, None, 10)
    assert bare.describe() == "claude-abcde [stopped] 10 B"


def test_owners_alive_gone_and_reused() -> None:
    me = os.getpid()
    assert pid_alive(me) and pid_alive(me, process_started(me))
    assert not pid_alive(None) and not pid_alive(0)
    started = process_started(me)
    assert started is not None and started > 0
    assert not pid_alive(me, started + 5)  # the same pid, started at another time: someone else now
    assert pid_alive(me, started + 0.5)  # within the clock's resolution
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid)
    assert process_started(proc.pid) is None
    assert pid_alive(1)  # someone else's process (init) is alive even when we may not signal it


def test_process_started_reads_the_right_field() -> None:
    # /proc/PID/stat field 22 (starttime) in clock ticks: two children started in order, a second apart.
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    time.sleep(1.0)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        older, theirs = process_started(first.pid), process_started(proc.pid)
        assert older is not None and theirs is not None and 0.8 <= theirs - older < 3
        with Path("/proc/uptime").open() as f:
            uptime = float(f.read().split()[0])
        assert abs(theirs - uptime) < 5
    finally:
        first.kill()
        first.wait()
        proc.kill()
        proc.wait()


def test_resolve_slug_by_prefix_names_the_candidates(tmp_path: Path) -> None:
    for slug in ("claude-aaaa1", "claude-aaaa2", "claude-aaaa3", "claude-aaaa4", "claude-aaaa5", "claude-aaaa6",
                 "other-bbbbb"):  # fmt: skip
        StateDir(slug, tmp_path).create()
    assert resolve_slug("other", tmp_path).slug == "other-bbbbb"
    assert resolve_slug("claude-aaaa1", tmp_path).slug == "claude-aaaa1"
    with pytest.raises(NotFoundError) as exc:
        resolve_slug("claude", tmp_path)
    assert str(exc.value) == (
        "'claude' matches 6 bottles (claude-aaaa1, claude-aaaa2, claude-aaaa3, claude-aaaa4, claude-aaaa5): "
        "type more of the slug"
    )
    with pytest.raises(NotFoundError, match="no bottle matches ''"):
        resolve_slug("", tmp_path)


def test_copy_sparse_copies_data_and_holes_exactly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with src.open("wb") as f:
        f.write(b"A" * 5000)
        f.seek(3 * 1024 * 1024)
        f.write(b"B" * 100)
        f.seek(6 * 1024 * 1024)
        f.write(b"C")
    fd = os.open(src, os.O_RDONLY)
    try:
        written = _copy_sparse(fd, tmp_path / "dst", 10 * 1024 * 1024)
    finally:
        os.close(fd)
    dst = tmp_path / "dst"
    assert dst.read_bytes() == src.read_bytes()
    assert written < 64 * 1024 and oct(dst.stat().st_mode & 0o777) == "0o600"
    # Over budget: the copy stops at the budget, and is as long as what it holds.
    fd = os.open(src, os.O_RDONLY)
    try:
        written = _copy_sparse(fd, tmp_path / "cut", 3000)
    finally:
        os.close(fd)
    assert written == 3000 and (tmp_path / "cut").read_bytes() == b"A" * 3000


def make(tmp_path: Path) -> StateDir:
    sd = StateDir("claude-abcde", tmp_path)
    sd.create()
    sd.write(BottleRecord(slug=sd.slug, agent="claude", bottle="default", backend="docker", status="running"))
    (sd.claude_home / "projects" / "p").mkdir(parents=True)
    return sd


def test_snapshots_count_against_their_budget_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_mod, "SNAPSHOT_BYTES", 10_000)
    sd = make(tmp_path)
    p = sd.claude_home / "projects" / "p"
    (p / "a.jsonl").write_bytes(b"a" * 6000)
    (p / "b.jsonl").write_bytes(b"b" * 6000)  # does not fit after a
    (p / "c.jsonl").write_bytes(b"c" * 3000)  # fits in what is left
    (p / "notes.txt").write_bytes(b"n")  # not a transcript
    dest = sd.snapshot_transcript()
    assert dest is not None
    copied = sorted(x.name for x in (dest / "p").iterdir())
    assert copied in (["a.jsonl", "c.jsonl"], ["b.jsonl", "c.jsonl"])  # one of the big ones, and the small one
    assert "over the snapshot budget" in (dest / "SKIPPED.txt").read_text()
    first = dest
    time.sleep(0.01)
    second = sd.snapshot_transcript()
    assert second is not None and second.name > first.name  # newest sorts last
    for _ in range(state_mod.SNAPSHOTS_KEPT):
        sd.snapshot_transcript()
    names = sorted(x.name for x in (sd.path / "transcript").iterdir())
    assert len(names) == state_mod.SNAPSHOTS_KEPT and first.name not in names


def test_no_projects_or_a_linked_one_gives_no_snapshot(tmp_path: Path) -> None:
    sd = make(tmp_path)
    assert sd.snapshot_transcript() is None  # an empty projects folder
    (sd.claude_home / "projects" / "p").rmdir()
    (sd.claude_home / "projects").rmdir()
    assert sd.snapshot_transcript() is None
    (sd.claude_home / "projects").symlink_to(tmp_path)
    assert sd.snapshot_transcript() is None


def test_a_crash_marked_without_a_snapshot_owes_one(tmp_path: Path) -> None:
    sd = make(tmp_path)
    (sd.claude_home / "projects" / "p" / "s.jsonl").write_text("{}\n")
    sd.update(attached_pid=123)
    sd.preserve_crash("why", snapshot=False)
    r = sd.read()
    assert (r.status, r.error, r.attached_pid, r.snapshot_due) == ("crashed", "why", None, True)
    assert not (sd.path / "transcript").exists()
    sd.settle_snapshot()
    assert sd.read().snapshot_due is False and any((sd.path / "transcript").iterdir())
    sd.preserve_crash("again")
    assert sd.read().snapshot_due is False


def test_abandoned_means_creating_with_its_owner_gone(tmp_path: Path) -> None:
    sd = make(tmp_path)
    sd.update(status="creating", owner_pid=os.getpid(), owner_started=process_started(os.getpid()))
    assert not sd.abandoned()
    sd.update(owner_pid=2**22 + 11)
    assert sd.abandoned() and sd.abandoned(sd.read())
    sd.update(status="running")
    assert not sd.abandoned()
