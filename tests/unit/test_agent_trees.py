"""Trees and files an agent made, on the host side (issue 9 findings 6, 11, 14): deep nesting, folders made
unreadable, sparse files, links, a hostile exit file. None may break a verb or fill the host's disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from claude_bottle.backend import _BACKENDS, BottlePlan
from claude_bottle.bottle import claude_code
from claude_bottle.bottle.state import SNAPSHOTS_KEPT, BottleRecord, StateDir
from claude_bottle.hostfs.walk import Walk, remove_tree, tree_size
from claude_bottle.work import common, inventory, run, stop

from .fakes import FakeBackend


def nest(root: Path, depth: int) -> Path:
    """depth nested folders under root, made by descriptor (the path would exceed PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    with open(os.open("deep.jsonl", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "w") as f:  # noqa: PTH123
        f.write("{}\n")
    os.close(fd)
    return root


def new_state(tmp_path: Path, slug: str = "claude-abcde") -> StateDir:
    sd = StateDir(slug, tmp_path / "state")
    sd.create()
    sd.write(BottleRecord(slug=slug, agent="claude", bottle="default", backend="fake", status="running"))
    (sd.claude_home / "projects" / "p").mkdir(parents=True)
    (sd.claude_home / "projects" / "p" / "s.jsonl").write_text('{"a":1}\n')
    return sd


# -- 11: deep and hostile trees -------------------------------------------------------------------
def test_deep_nesting_is_walked_sized_and_removed_without_recursion(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    nest(root, 1500)
    try:
        walk = Walk(root)
        assert sum(1 for _ in walk) == 257 and walk.truncated  # stops at its depth limit, says so
        size, complete = tree_size(root)
        assert size >= 0 and not complete
    finally:
        remove_tree(root)
    assert not root.exists()


def test_remove_tree_never_follows_a_link_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("mine")
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "link").symlink_to(outside)
    (tree / "file-link").symlink_to(outside / "keep")
    remove_tree(tree)
    assert not tree.exists() and (outside / "keep").read_text() == "mine"


def test_a_folder_made_unreadable_is_removed_by_its_owner() -> None:
    """As a normal user (the agent shares the uid), chmod 000 must not stop a removal."""
    base = Path(tempfile.mkdtemp(prefix="cbtest-"))  # pytest's tmp root is root's alone: nobody cannot enter
    base.chmod(0o755)
    os.chown(base, 65534, 65534)
    code = (
        "import os, sys; from pathlib import Path; from claude_bottle.hostfs.walk import remove_tree\n"
        "b = Path(sys.argv[1]); t = b / 'tree'; (t / 'x' / 'y').mkdir(parents=True)\n"
        "(t / 'x' / 'y' / 'f').write_text('z'); os.chmod(t / 'x' / 'y', 0); os.chmod(t / 'x', 0o500)\n"
        "remove_tree(t); print('gone' if not t.exists() else 'left')\n"
    )
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code, str(base)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    try:
        assert out.stdout.strip() == "gone", out.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_deep_claude_home_does_not_break_ls_stop_or_removal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_BACKENDS, "fake", "tests.unit.fakes:FakeBackend")
    FakeBackend.reset()
    sd = new_state(tmp_path)
    nest(sd.claude_home / "projects", 1100)
    other = new_state(tmp_path, "other-abcde")
    try:
        rows = {r.slug: r for r in inventory.list_bottles(tmp_path / "state")}
        assert set(rows) == {sd.slug, other.slug}
        summary = sd.summary()
        assert summary.size > 0
        stop.stop_bottle(sd, remove=True)
        assert not sd.path.exists() and other.path.exists()
    finally:
        remove_tree(sd.path)  # pytest's own clean-up recurses: it must never meet this tree


# -- 6: snapshots are bounded and never taken by ls -----------------------------------------------
def test_a_sparse_transcript_is_not_expanded(tmp_path: Path) -> None:
    sd = new_state(tmp_path)
    big = sd.claude_home / "projects" / "p" / "big.jsonl"
    with big.open("wb") as f:
        f.truncate(2 * 1024**3)
        f.seek(0)
        f.write(b'{"x":1}\n')
    t0 = time.monotonic()
    dest = sd.snapshot_transcript()
    assert dest is not None and time.monotonic() - t0 < 5
    copy = dest / "p" / "big.jsonl"
    assert copy.stat().st_size == 2 * 1024**3  # the same file ...
    assert copy.stat().st_blocks * 512 < 1024 * 1024  # ... holding only its data
    assert oct(copy.stat().st_mode & 0o777) == "0o600"


def test_snapshots_are_capped_in_bytes_and_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from claude_bottle.bottle import state as state_mod

    monkeypatch.setattr(state_mod, "SNAPSHOT_BYTES", 4096)
    sd = new_state(tmp_path)
    (sd.claude_home / "projects" / "p" / "huge.jsonl").write_bytes(b"y" * 100_000)
    dest = sd.snapshot_transcript()
    assert dest is not None and not (dest / "p" / "huge.jsonl").exists()
    assert "huge.jsonl" in (dest / "SKIPPED.txt").read_text()
    for _ in range(SNAPSHOTS_KEPT + 3):
        sd.snapshot_transcript()
    assert len(list((sd.path / "transcript").iterdir())) == SNAPSHOTS_KEPT


def test_ls_marks_a_crash_but_copies_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_BACKENDS, "fake", "tests.unit.fakes:FakeBackend")
    FakeBackend.reset()
    sd = new_state(tmp_path)
    sd.update(attached_pid=2**22 + 7, attached_started=1.0)  # a CLI that is gone
    (row,) = inventory.list_bottles(tmp_path / "state")
    assert row.status == "crashed" and sd.preserved() == "crash"
    assert not (sd.path / "transcript").exists()
    assert sd.read().snapshot_due
    stop.stop_bottle(sd)  # the next stop takes the snapshot owed
    assert list((sd.path / "transcript").iterdir()) and not sd.read().snapshot_due
    assert sd.read().status == "crashed"


# -- 14: the exit file ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("0\n", 0),
        ("3", 3),
        ("255", 255),
        ("²", None),
        ("-1", None),
        ("+1", None),
        ("1_0", None),
        ("256", None),
        ("", None),
        ("12345678901234567890", None),
    ],
)
def test_exit_codes_are_read_strictly(text: str, code: int | None) -> None:
    assert claude_code.parse_exit_code(text) == code


def test_a_hostile_exit_file_is_a_crash_not_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_BACKENDS, "fake", "tests.unit.fakes:FakeBackend")
    FakeBackend.reset()
    FakeBackend.outputs = {"cat /tmp/claude-bottle-exit": (0, "\u00b2\n")}  # has-session: 1 (claude ended)
    sd = new_state(tmp_path)
    from claude_bottle.bottle import Bottle

    bottle = Bottle.recorded(sd)
    started = common.Started(bottle, FakeBackend(), BottlePlan(bottle))
    result = run.run_claude(started, prompt=None, detach=False, resume=False, tty=True)
    assert result.crashed and result.exit_code == claude_code.UNREADABLE_EXIT
    assert sd.read().status == "crashed" and sd.preserved() == "crash"
