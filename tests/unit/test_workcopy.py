"""Copy mode (issue 21): the agent works on a copy of its own; `apply` brings its changes home, judged.

No engine: the copy is made and changed here as the agent would, and real git checks what reached the
operator's tree."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from claude_bottle.bottle.state import BottleRecord, StateDir
from claude_bottle.errors import BottleError
from claude_bottle.hostfs.copy_mode import apply, changes, copy_path, create, diff, inert, pending
from claude_bottle.identity import RuntimeIds


def _git(cwd: Path, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=30)


@pytest.fixture
def world(tmp_path: Path) -> tuple[StateDir, Path]:
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "src" / "a.txt").write_text("a\n")
    (ws / "b.txt").write_text("b\n")
    (ws / "run.sh").write_text("#!/bin/sh\n")
    (ws / "run.sh").chmod(0o755)
    (ws / "link").symlink_to("src/a.txt")
    sd = StateDir("claude-cpyaa")
    sd.create()
    sd.write(BottleRecord(slug=sd.slug, agent="claude", bottle="default", backend="fake", status="stopped",
                          workspace=str(ws)))  # fmt: skip
    ids = RuntimeIds(os.getuid(), os.getgid(), os.getuid(), os.getgid())
    create(sd, ws, ids)
    return sd, ws


def test_the_copy_holds_the_workspace_and_nothing_changed_yet(world: tuple[StateDir, Path]) -> None:
    sd, _ws = world
    copy = copy_path(sd)
    assert (copy / "src" / "a.txt").read_text() == "a\n" and (copy / "link").readlink() == Path("src/a.txt")
    assert (copy / "run.sh").stat().st_mode & 0o111
    assert changes(sd) == ([], [])
    assert pending(sd) is None
    assert diff(sd) == "no changes\n"


def test_apply_brings_the_agents_changes_and_keeps_the_operators(world: tuple[StateDir, Path]) -> None:
    sd, ws = world
    copy = copy_path(sd)
    (copy / "src" / "a.txt").write_text("a by the agent\n")
    (copy / "new").mkdir()
    (copy / "new" / "n.txt").write_text("n\n")
    (copy / "b.txt").unlink()
    (copy / "run.sh").write_text("#!/bin/sh\necho agent\n")
    (ws / "run.sh").write_text("#!/bin/sh\necho operator\n")  # the operator changed it too: a conflict
    found, _ = changes(sd)
    assert {(c.path, c.kind) for c in found} == {
        ("src/a.txt", "changed"),
        ("new", "added"),
        ("new/n.txt", "added"),
        ("b.txt", "deleted"),
        ("run.sh", "changed"),
    }
    assert "5 changes not applied" in (pending(sd) or "")
    shown = diff(sd)
    assert "-a\n+a by the agent" in shown and "D b.txt" in shown
    said = apply(sd)
    assert said.startswith(f"applied 4 changes to {ws} (2 added, 1 changed, 1 deleted)"), said
    assert "not applied: run.sh: changed in your workspace since the bottle started" in said
    assert (ws / "src" / "a.txt").read_text() == "a by the agent\n" and (ws / "new" / "n.txt").read_text() == "n\n"
    assert not (ws / "b.txt").exists() and "operator" in (ws / "run.sh").read_text()
    # Applied once: the next apply has only the conflict left.
    again = apply(sd)
    assert again.startswith("applied 0 changes") and "run.sh" in again


def test_nothing_that_makes_a_repository_reaches_the_workspace(world: tuple[StateDir, Path], tmp_path: Path) -> None:
    """A nested repository, a bare look-alike with a HEAD link, a HEAD file in an existing folder: git in the
    workspace afterwards runs nothing (the control: the same tree, copied by hand, does run it)."""
    sd, ws = world
    copy = copy_path(sd)
    marker = tmp_path / "ran"
    evil = (
        f"[core]\n\trepositoryformatversion = 0\n\tbare = false\n\tworktree = {ws}\n"
        f'\tfsmonitor = "touch {marker}; false"\n'
    )
    for where in (copy / "sub" / ".git", copy / "src", copy / "data"):
        where.mkdir(parents=True, exist_ok=True)
        (where / "objects").mkdir()
        (where / "refs").mkdir()
        (where / "config").write_text(evil)
    (copy / "sub" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (copy / "src" / "HEAD").write_text("ref: refs/heads/main\n")
    (copy / "data" / "HEAD").symlink_to("refs/heads/main")
    control = tmp_path / "control"
    subprocess.run(["cp", "-a", str(copy), str(control)], check=True)
    _git(control / "src", "status", home=tmp_path)
    assert marker.exists(), "the control: a HEAD the agent left in a folder makes git there run its config"
    marker.unlink()
    said = apply(sd)
    assert "not applied: src/HEAD: a HEAD file" in said and "not applied: data/HEAD: a HEAD link" in said
    assert "not applied: sub/.git: a .git" in said
    assert not (ws / "sub" / ".git").exists() and not (ws / "src" / "HEAD").exists()
    assert (ws / "src" / "config").exists()  # a file named config is a file
    for where in (ws, ws / "src", ws / "data", ws / "sub"):
        _git(where, "status", home=tmp_path)
        _git(where, "rev-parse", "--show-toplevel", home=tmp_path)
    assert not marker.exists()


def test_inert_knows_every_spelling() -> None:
    assert inert("a/.git", ("d",)) and inert("a/.GIT", ("d",)) and inert(".git/x", ("f", "-", ""))
    assert inert("x/.git.", ("f", "-", ""))  # what a folding disk would read as .git
    assert inert("x/HEAD", ("l", "refs/heads/x")) and not inert("x/HEAD", ("l", "elsewhere"))
    assert inert("x/HEAD", ("f", "-", ""), b"ref:\trefs/heads/x\n")
    assert inert("x/HEAD", ("f", "-", ""), b"0123456789abcdef0123456789abcdef01234567\n")
    assert not inert("x/HEAD", ("f", "-", ""), b"# the head of the list\n")
    assert not inert("x/gitignore", ("f", "-", ""))


def test_apply_never_writes_through_a_link(world: tuple[StateDir, Path], tmp_path: Path) -> None:
    sd, ws = world
    outside = tmp_path / "outside"
    outside.mkdir()
    copy = copy_path(sd)
    (copy / "src" / "evil.txt").write_text("x\n")
    # The operator's src/ is replaced by a link out (by anyone) after the copy was made.
    (ws / "src" / "a.txt").unlink()
    (ws / "src").rmdir()
    (ws / "src").symlink_to(outside)
    said = apply(sd)
    assert "not applied: src/evil.txt" in said and not list(outside.iterdir())


def test_apply_refuses_a_running_bottle_and_a_bottle_without_a_copy(world: tuple[StateDir, Path]) -> None:
    sd, _ws = world
    sd.update(status="running", owner_pid=os.getpid())
    with pytest.raises(BottleError, match="is running: stop it first"):
        apply(sd)
    other = StateDir("claude-nocpy")
    other.create()
    other.write(BottleRecord(slug=other.slug, agent="claude", bottle="default", backend="fake", status="stopped"))
    with pytest.raises(BottleError, match="no copy of its workspace"):
        changes(other)


def test_a_workspace_too_large_is_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from claude_bottle.hostfs import copy_mode as workcopy

    ws = tmp_path / "big"
    ws.mkdir()
    for i in range(12):
        (ws / f"f{i}").write_text("x")
    monkeypatch.setattr(workcopy, "MAX_FILES", 10)
    sd = StateDir("claude-bigws")
    sd.create()
    with pytest.raises(BottleError, match="make it a git repository") as got:
        create(sd, ws, RuntimeIds(os.getuid(), os.getgid(), os.getuid(), os.getgid()))
    assert "\n" not in str(got.value)


# -- what a review found (issue 21): the folder a change lands in, hooks, the race, Mercurial -----------------
def _bare(where: Path) -> None:
    subprocess.run(["git", "init", "-q", "--bare", str(where)], check=True, capture_output=True)


def test_nothing_is_applied_into_a_repository_of_the_workspace(world: tuple[StateDir, Path], tmp_path: Path) -> None:
    """A `.bare` git dir (the worktree layout), a bare mirror in a build folder: a plain `config` or a hook
    written into one makes git there run it, whatever its name."""
    sd, ws = world
    _bare(ws / ".bare")
    _bare(ws / "build" / "mirror.git")
    copy = copy_path(sd)
    subprocess.run(["cp", "-a", f"{ws}/.bare", f"{ws}/build", str(copy)], check=True)
    marker = tmp_path / "ran"
    with (copy / ".bare" / "config").open("a") as f:
        f.write(f'[core]\n\tfsmonitor = "touch {marker}; false"\n')
    (copy / "build" / "mirror.git" / "hooks" / "post-update").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (copy / "src" / "fine.txt").write_text("fine\n")
    said = apply(sd)
    assert "not applied: .bare/config: inside .bare, a repository of your workspace" in said, said
    assert "not applied: build/mirror.git/hooks/post-update: inside build/mirror.git" in said, said
    assert (ws / "src" / "fine.txt").exists() and "fsmonitor" not in (ws / ".bare" / "config").read_text()
    assert not (ws / "build" / "mirror.git" / "hooks" / "post-update").exists()


def test_a_workspace_that_is_itself_a_repository_takes_nothing(tmp_path: Path) -> None:
    ws = tmp_path / "bare"
    _bare(ws)
    sd = StateDir("claude-cpyba")
    sd.create()
    sd.write(BottleRecord(slug=sd.slug, agent="claude", bottle="default", backend="fake", status="stopped",
                          workspace=str(ws)))  # fmt: skip
    create(sd, ws, RuntimeIds(os.getuid(), os.getgid(), os.getuid(), os.getgid()))
    (copy_path(sd) / "hooks" / "post-receive").write_text("#!/bin/sh\ntouch x\n")
    said = apply(sd)
    assert said.startswith("applied 0 changes") and "hooks/post-receive: inside ., a repository" in said, said


def test_the_folder_git_runs_hooks_from_is_not_written(world: tuple[StateDir, Path], tmp_path: Path) -> None:
    sd, ws = world
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    subprocess.run(["git", "-C", str(ws), "config", "core.hooksPath", ".husky/_"], check=True)
    copy = copy_path(sd)
    (copy / ".husky" / "_").mkdir(parents=True)
    (copy / ".husky" / "pre-commit").write_text("#!/bin/sh\ntouch ran\n")
    said = apply(sd)
    assert "not applied: .husky/pre-commit: in the folder your git runs hooks from" in said, said
    assert not (ws / ".husky" / "pre-commit").exists()


def test_a_head_is_judged_on_what_is_written(world: tuple[StateDir, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The race a review won: the agent shows a harmless HEAD to the first look and a real one to the copy."""
    from claude_bottle.hostfs import copy_mode as workcopy

    sd, ws = world
    (copy_path(sd) / "src" / "HEAD").write_text("ref: refs/heads/main\n")
    real_read = workcopy._read
    monkeypatch.setattr(workcopy, "_read", lambda root, path, limit: b"just a file\n" if path.endswith("HEAD")
                        else real_read(root, path, limit))  # fmt: skip
    said = apply(sd)
    assert "not applied: src/HEAD: a HEAD file" in said, said
    assert not (ws / "src" / "HEAD").exists() and not list((ws / "src").glob(".*apply"))


def test_mercurials_hooks_never_come_home(world: tuple[StateDir, Path]) -> None:
    sd, ws = world
    (copy_path(sd) / ".hg").mkdir()
    (copy_path(sd) / ".hg" / "hgrc").write_text("[hooks]\npre-status = touch ran\n")
    said = apply(sd)
    assert "not applied: .hg: a .hg" in said and "not applied: .hg/hgrc: a .hg" in said, said
    assert not (ws / ".hg").exists()


def test_a_copy_mode_run_never_touches_the_operators_own_repositories(tmp_path: Path) -> None:
    """Its settle judged the operator's workspace (which the agent never wrote) and moved their own config."""
    import time

    from claude_bottle.git.settle import settle_bottle

    ws = tmp_path / "ws"
    (ws / "a").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(ws / "a")], check=True)
    sd = StateDir("claude-cpyst")
    sd.create()
    sd.write(BottleRecord(slug=sd.slug, agent="claude", bottle="default", backend="fake", status="stopped",
                          workspace=str(ws), run_started=time.time() - 5,
                          manifest={"agent": {"workspace_mode": "copy"}}))  # fmt: skip
    subprocess.run(["git", "-C", str(ws / "a"), "config", "alias.st", "status"], check=True)
    said: list[str] = []
    settle_bottle(sd, said.append)
    assert said == [] and "alias" in (ws / "a" / ".git" / "config").read_text()
    assert sd.read().run_started is None


def test_apply_and_merge_ask_the_backend_whether_the_bottle_still_runs(
    world: tuple[StateDir, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record that says crashed (a forged exit file, noticed by `ls`) while the containers run on."""
    from claude_bottle.backend import _BACKENDS
    from claude_bottle.work import stop

    from .fakes import FakeBackend

    monkeypatch.setitem(_BACKENDS, "fake", "tests.unit.fakes:FakeBackend")
    FakeBackend.reset()
    sd, _ws = world
    sd.update(status="crashed")
    FakeBackend.live[sd.slug] = "running"
    with pytest.raises(BottleError, match="is running: its work can change between your review and the apply"):
        stop.ensure_stopped(sd, "apply")
    FakeBackend.live.clear()
    stop.ensure_stopped(sd, "apply")


def test_an_engine_that_does_not_keep_the_bottle_users_ownership_is_refused(tmp_path: Path) -> None:
    import json

    from claude_bottle.backend.docker.backend import DockerBottleBackend

    sd = StateDir("claude-cpyow")
    sd.create()
    sd.write(BottleRecord(slug=sd.slug, agent="claude", bottle="default", backend="docker", agent_ids=[60999, 60999]))
    (sd.path / "mounts.json").write_text(json.dumps([]))
    (sd.path / "run" / "agent").mkdir(parents=True)
    mark = sd.path / "run" / "agent" / "mounts"
    mark.write_text("")
    os.chown(mark, 1234, 1234)  # as an engine that maps owners would leave it
    with pytest.raises(BottleError, match="owned by uid 1234 on this machine, not the bottle user"):
        DockerBottleBackend._verify_mounts(sd)
    os.chown(mark, 60999, 60999)
    DockerBottleBackend._verify_mounts(sd)
