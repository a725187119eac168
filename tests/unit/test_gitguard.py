"""Git on the host runs nothing an agent wrote (issue 9 finding 1): what a run leaves is settled at its end.

These use the real git on a real repository: each attack is shown to work before the settle (the control)
and to run nothing after it.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from claude_bottle.backend import _BACKENDS
from claude_bottle.bottle.state import BottleRecord, StateDir
from claude_bottle.git.settle import config_is_safe, config_keys, protected, settle
from claude_bottle.work import stop

from .fakes import FakeBackend

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **GIT_ENV, "HOME": str(home), "PATH": os.environ["PATH"]}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=30)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    git(ws, "init", "-q", "-b", "main", home=tmp_path)
    (ws / "a.txt").write_text("a\n")
    git(ws, "add", "a.txt", home=tmp_path)
    git(ws, "commit", "-qm", "init", home=tmp_path)
    return ws


def payload(tmp_path: Path, name: str) -> tuple[str, Path]:
    marker = tmp_path / f"ran-{name}"
    return f"touch {marker}", marker


def plant_config(gitdir: Path, command: str) -> None:
    gitdir.mkdir(parents=True, exist_ok=True)
    (gitdir / "config").write_text(
        f'[core]\n\trepositoryformatversion = 0\n\tbare = false\n\tfsmonitor = "{command}; false"\n'
    )


# -- the config judge ---------------------------------------------------------------------------------
def test_a_fresh_repositorys_config_is_safe_and_code_keys_are_not(repo: Path) -> None:
    assert config_is_safe((repo / ".git" / "config").read_text())
    assert config_keys(
        '[remote "origin"]\n\turl = x\n\tfetch = +refs/*:refs/*\n[branch "main"]\n\tremote = origin\n'
    ) == [
        "remote.origin.url",
        "remote.origin.fetch",
        "branch.main.remote",
    ]
    for evil in (
        "[core]\n\tfsmonitor = touch x\n",
        "[core]\n\thooksPath = /tmp/h\n",
        "[alias]\n\tst = !touch x\n",
        '[filter "x"]\n\tclean = touch x\n',
        "[include]\n\tpath = /tmp/c\n",
        '[includeIf "gitdir:/"]\n\tpath = /tmp/c\n',
        "[core]\n\tpager = touch x\n",
        "[core]\n\tworktree = /home\n",
        "[core] fsmonitor = touch x\n",  # a key on the section's line: not plain, not safe
        "fsmonitor = x\n",  # a key before any section
        '[core "x]\n',
    ):
        assert not config_is_safe(evil), evil


# -- settle: each attack works before, runs nothing after ------------------------------------------
def test_commondir_redirect_is_quarantined(repo: Path, tmp_path: Path) -> None:
    since = time.time()
    command, marker = payload(tmp_path, "commondir")
    evil = repo / "evil-common"
    plant_config(evil, command)
    for d in ("objects", "refs", "hooks"):
        (evil / d).mkdir()
    (repo / ".git" / "refs").rename(evil / "refs2")  # not needed for the attack: keep the repo's own refs
    (evil / "refs2").rename(repo / ".git" / "refs")
    (repo / ".git" / "commondir").write_text(str(evil) + "\n")
    git(repo, "status", home=tmp_path)
    assert marker.exists(), "the control: git on the host ran the agent's command"
    marker.unlink()
    quarantine = tmp_path / "q"
    findings, complete = settle(repo, since, quarantine)
    assert complete and [f.path for f in findings] == [repo / ".git" / "commondir"]
    assert "commondir" in findings[0].why and findings[0].moved_to and findings[0].moved_to.exists()
    git(repo, "status", home=tmp_path)
    git(repo, "commit", "--allow-empty", "-qm", "x", home=tmp_path)
    assert not marker.exists()


def test_nested_repositories_and_bare_look_alikes_are_settled(repo: Path, tmp_path: Path) -> None:
    since = time.time()
    # A nested .git with an fsmonitor, a hook in another, a bare-looking folder, a .git file pointing out.
    command, marker = payload(tmp_path, "nested")
    plant_config(repo / "src" / ".git", command)
    for d in ("objects", "refs"):
        (repo / "src" / ".git" / d).mkdir()
    (repo / "src" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / "lib").mkdir()
    git(repo / "lib", "init", "-q", home=tmp_path)
    hook = repo / "lib" / ".git" / "hooks" / "pre-commit"
    hook.write_text(f"#!/bin/sh\n{command}\n")
    hook.chmod(0o755)
    bare = repo / "data"
    plant_config(bare, command)
    for d in ("objects", "refs"):
        (bare / d).mkdir()
    (bare / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / "pointer").mkdir()
    (repo / "pointer" / ".git").write_text(f"gitdir: {tmp_path}/elsewhere\n")
    (repo / "fresh").mkdir()
    git(repo / "fresh", "init", "-q", home=tmp_path)
    git(repo / "src", "status", home=tmp_path)
    assert marker.exists(), "the control: git in src/ ran the agent's command"
    marker.unlink()
    # In the bare look-alike git reads the agent's config as the repository's (any command that uses it runs it).
    assert command in git(repo / "data", "config", "core.fsmonitor", home=tmp_path).stdout

    findings, complete = settle(repo, since, tmp_path / "q")
    moved = sorted(str(f.path.relative_to(repo)) for f in findings)
    assert complete and moved == ["data/config", "lib/.git/hooks/pre-commit", "pointer/.git", "src/.git/config"]
    assert (repo / "fresh" / ".git" / "config").exists()  # a plain `git init` is kept as it is
    assert git(repo / "data", "config", "core.fsmonitor", home=tmp_path).stdout == ""
    for where in (repo / "src", repo / "lib", repo):
        git(where, "status", home=tmp_path)
    (repo / "lib" / "x").write_text("x")
    git(repo / "lib", "add", "x", home=tmp_path)
    git(repo / "lib", "commit", "-qm", "x", home=tmp_path)
    assert not marker.exists()


def test_a_comment_ending_in_a_backslash_hides_no_key(repo: Path, tmp_path: Path) -> None:
    """Issue 21 finding 2: a `\\` at the end of a comment does not continue the line for git, so the key on
    the next line is read. The judge asks git itself, so it reads the same key git does."""
    since = time.time()
    command, marker = payload(tmp_path, "comment")
    sub = repo / "sub"
    sub.mkdir()
    git(sub, "init", "-q", home=tmp_path)
    cfg = sub / ".git" / "config"
    cfg.write_text(f'[core]\n\tbare = false ; \\\n\tfsmonitor = "{command}; false"\n')
    git(sub, "status", home=tmp_path)
    assert marker.exists(), "the control: git reads the key after the comment and runs it"
    marker.unlink()
    assert "core.fsmonitor" in (config_keys(cfg.read_bytes()) or [])
    assert not config_is_safe(cfg.read_text())
    findings, complete = settle(repo, since, tmp_path / "q")
    assert complete and [f.path for f in findings] == [cfg] and "core.fsmonitor" in findings[0].why
    git(sub, "status", home=tmp_path)
    assert not marker.exists()


def test_a_config_git_cannot_read_is_not_kept(repo: Path, tmp_path: Path) -> None:
    since = time.time()
    sub = repo / "sub"
    sub.mkdir()
    git(sub, "init", "-q", home=tmp_path)
    (sub / ".git" / "config").write_bytes(b"[core\n\xff fsmonitor\n")
    assert config_keys((sub / ".git" / "config").read_bytes()) is None
    findings, _ = settle(repo, since, tmp_path / "q")
    assert [f.path.relative_to(repo).as_posix() for f in findings] == ["sub/.git/config"]
    assert "not readable by git itself" in findings[0].why


@pytest.mark.parametrize("shape", ["head-link", "refs-file", "objects-link", "detached"])
def test_every_folder_git_takes_for_a_repository_is_judged(repo: Path, tmp_path: Path, shape: str) -> None:
    """git's own test for a repository (validate_headref, then `objects` and `refs` it can enter): a HEAD that
    is a link to refs/..., or `refs` a file with the x bit, or `objects` a link, still make one."""
    since = time.time()
    command, marker = payload(tmp_path, shape)
    bare = repo / "data"
    plant_config(bare, command)
    with (bare / "config").open("a") as f:
        f.write(f"\tworktree = {repo}\n")
    (tmp_path / "elsewhere").mkdir()
    if shape == "objects-link":
        (bare / "objects").symlink_to(tmp_path / "elsewhere")
    else:
        (bare / "objects").mkdir()
    if shape == "refs-file":
        (bare / "refs").write_text("")
        (bare / "refs").chmod(0o755)
    else:
        (bare / "refs").mkdir()
    if shape == "head-link":
        (bare / "HEAD").symlink_to("refs/heads/main")
    elif shape == "detached":
        (bare / "HEAD").write_text("0123456789abcdef0123456789abcdef01234567\n")
    else:
        (bare / "HEAD").write_text("ref:   refs/heads/main\n")
    git(bare, "status", home=tmp_path)
    assert marker.exists(), f"the control: git in a {shape} folder reads it as a repository and runs its config"
    marker.unlink()
    findings, _ = settle(repo, since, tmp_path / "q")
    assert [f.path.relative_to(repo).as_posix() for f in findings] == ["data/config"]
    git(bare, "status", home=tmp_path)
    assert not marker.exists()


def test_files_older_than_the_run_and_read_only_paths_are_left_alone(repo: Path, tmp_path: Path) -> None:
    plant_config(repo / "old" / ".git", "true")  # the operator's own, from before the run
    (repo / ".git" / "config").write_text((repo / ".git" / "config").read_text() + "[core]\n\teditor = vim\n")
    since = time.time() + 5  # the run began after those were written
    findings, _ = settle(repo, since, tmp_path / "q")
    assert findings == []
    # Changed during the run but read-only to the agent all along: only the host could have done it.
    findings, _ = settle(repo, time.time() - 60, tmp_path / "q", skip=[".git/config"])
    assert [f.path.name for f in findings] == ["config"] and findings[0].path.parent.name == ".git"
    assert "old" in str(findings[0].path)


def test_protected_lists_the_repositorys_control_paths(repo: Path, tmp_path: Path) -> None:
    (repo / ".git" / "hooks").rename(tmp_path / "gone")
    assert protected(repo) == [".git/config", ".git/hooks", ".git/info"]
    assert (repo / ".git" / "hooks").is_dir()  # created empty so it can be protected
    wt = tmp_path / "wt"
    wt.mkdir()
    (wt / ".git").write_text(f"gitdir: {repo}/.git/worktrees/wt\n")
    assert protected(wt) == [".git"]


def test_stop_settles_the_workspace_and_keeps_what_it_moved(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(_BACKENDS, "fake", "tests.unit.fakes:FakeBackend")
    FakeBackend.reset()
    sd = StateDir("claude-abcde")
    sd.create()
    sd.write(
        BottleRecord(
            slug=sd.slug,
            agent="claude",
            bottle="default",
            backend="fake",
            status="running",
            workspace=str(repo),
            run_started=time.time() - 1,
        )
    )
    (repo / ".git" / "commondir").write_text("/tmp\n")
    said: list[str] = []
    with pytest.raises(Exception, match="preserved \\(git-quarantine\\)"):
        stop.stop_bottle(sd, remove=True, notify=said.append)
    assert not (repo / ".git" / "commondir").exists()
    assert sd.preserved() == "git-quarantine" and (sd.path / "git-quarantine" / "findings.txt").exists()
    assert any("commondir" in line for line in said) and any("keep claude-abcde --release" in line for line in said)
    assert sd.read().run_started is None
    said.clear()
    stop.stop_bottle(sd, notify=said.append)  # settled once: nothing more to say
    assert said == []
