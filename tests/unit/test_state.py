from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from claude_bottle.bottle.state import BottleRecord, StateDir, list_state_dirs, new_slug, resolve_slug
from claude_bottle.errors import BottleError, NotFoundError


def make(root: Path, slug: str) -> StateDir:
    sd = StateDir(slug, root)
    sd.create()
    sd.write(BottleRecord(slug=slug, agent=slug.rsplit("-", 1)[0], bottle="default", backend="docker"))
    return sd


def test_modes_and_schema(tmp_path: Path) -> None:
    sd = make(tmp_path / "state", "claude-abcde")
    assert stat.S_IMODE(sd.path.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE(sd.record_path.stat().st_mode) == 0o600
    data = json.loads(sd.record_path.read_text())
    assert data["schema_version"] == 1 and data["status"] == "creating"
    assert sd.update(status="running").status == "running"
    assert not list(sd.path.glob(".bottle.json.*.tmp"))


def test_slug_shape() -> None:
    slug = new_slug("claude")
    assert slug.startswith("claude-") and len(slug) == len("claude-") + 5
    StateDir(slug)  # valid
    for bad in ("../etc", "claude", "Claude-abcde", "claude-abcd!"):
        with pytest.raises(BottleError):
            StateDir(bad)


def test_corrupt_record_is_recovered_not_fatal(tmp_path: Path) -> None:
    sd = make(tmp_path, "claude-abcde")
    sd.record_path.write_text("{torn")
    rec = sd.read()
    assert rec.status == "failed" and rec.agent == "claude"
    assert "unreadable" in (rec.error or "")
    assert list(tmp_path.glob("claude-abcde/bottle.corrupt-*"))


def test_resolve_slug_by_unique_prefix(tmp_path: Path) -> None:
    make(tmp_path, "claude-abcde")
    make(tmp_path, "claude-abxyz")
    make(tmp_path, "other-12345")
    assert resolve_slug("other", tmp_path).slug == "other-12345"
    assert resolve_slug("claude-abc", tmp_path).slug == "claude-abcde"
    with pytest.raises(NotFoundError, match="matches 2 bottles"):
        resolve_slug("claude-ab", tmp_path)
    with pytest.raises(NotFoundError, match="no bottle matches 'zzz'"):
        resolve_slug("zzz", tmp_path)
    assert [d.slug for d in list_state_dirs(tmp_path)] == ["claude-abcde", "claude-abxyz", "other-12345"]


def test_lock_is_exclusive(tmp_path: Path) -> None:
    sd = make(tmp_path, "claude-abcde")
    with sd.lock(), pytest.raises(BottleError, match="busy"), StateDir("claude-abcde", tmp_path).lock():
        pass


def test_preserve_marker(tmp_path: Path) -> None:
    sd = make(tmp_path, "claude-abcde")
    assert sd.preserved() is None
    sd.preserve("crash")
    assert sd.preserved() == "crash"
    assert stat.S_IMODE(sd.preserve_path.stat().st_mode) == 0o600


def test_transcript_snapshot_copies_regular_files_only(tmp_path: Path) -> None:
    import os

    sd = make(tmp_path, "claude-abcde")
    proj = sd.claude_home / "projects" / "-workspace"
    proj.mkdir(parents=True)
    (proj / "s1.jsonl").write_text('{"a": 1}\n')
    secret = tmp_path / "host-secret.jsonl"
    secret.write_text("host file\n")
    (proj / "evil.jsonl").symlink_to(secret)  # planted by the agent
    (sd.claude_home / "projects" / "link").symlink_to(tmp_path, target_is_directory=True)
    os.mkfifo(proj / "fifo.jsonl")
    dest = sd.snapshot_transcript()
    assert dest is not None
    copied = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert copied == ["-workspace/s1.jsonl"]
