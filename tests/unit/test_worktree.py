"""Worktree mode without an engine: the checkout is the bottle's own, the operator's repository is never
written by what the agent does in it, and the host reads the bottle's work without running git where the
agent could have planted configuration, hooks or attributes (issue 15, items 1 and 2)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from claude_bottle.bottle.state import BottleRecord, StateDir
from claude_bottle.bottle.work_left import work_left
from claude_bottle.cli import main
from claude_bottle.git import command, worktree
from claude_bottle.identity import RuntimeIds

ENV = {
    "GIT_AUTHOR_NAME": "Op",
    "GIT_AUTHOR_EMAIL": "op@example.test",
    "GIT_COMMITTER_NAME": "Op",
    "GIT_COMMITTER_EMAIL": "op@example.test",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str, check: bool = True) -> str:
    env = {**os.environ, **ENV, "HOME": str(cwd.parent)}
    r = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"git {args}: {r.stderr}")
    return r.stdout.strip()


def agent_git(checkout: Path, *args: str) -> str:
    """What the agent does in its checkout (in the bottle it runs git there as it likes)."""
    return git(checkout, *args)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "project"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    (r / "README.md").write_text("hello\n")
    (r / "app.py").write_text("print('v1')\n")
    git(r, "add", ".")
    git(r, "commit", "-q", "-m", "first")
    return r


def fingerprint(repo: Path) -> dict[str, str]:
    """Everything of the operator's that the agent must not touch."""
    g = repo / ".git"
    return {
        "refs": git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        "head": (g / "HEAD").read_text(),
        "index": (g / "index").read_bytes().hex(),
        "config": (g / "config").read_text(),
        "hooks": " ".join(sorted(p.name for p in (g / "hooks").iterdir())) if (g / "hooks").is_dir() else "",
        "status": git(repo, "status", "--porcelain", "--untracked-files=all"),
        "files": " ".join(sorted(_files(repo))),
    }


def _files(repo: Path) -> list[str]:
    return [
        f"{p.relative_to(repo)}:{p.read_bytes().hex()}"
        for p in repo.rglob("*")
        if p.is_file() and ".git" not in p.parts
    ]


def new_bottle(repo: Path, slug: str) -> StateDir:
    state = StateDir(slug)
    state.create()
    record = BottleRecord(slug=slug, agent="a", bottle="default", backend="docker", workspace=str(repo))
    state.write(dataclasses.replace(record, status="stopped"))
    info = worktree.create(state, worktree.project(repo), RuntimeIds.for_host(repo))
    state.update(worktree=info)
    return state


def test_the_workspace_must_be_a_committed_repository_at_its_top(tmp_path: Path, repo: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(worktree.WorktreeError, match="is not a git repository: worktree mode needs one"):
        worktree.project(plain)
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    with pytest.raises(worktree.WorktreeError, match="has no commit yet: commit once"):
        worktree.project(empty)
    (repo / "sub").mkdir()
    with pytest.raises(worktree.WorktreeError, match="is inside the repository"):
        worktree.project(repo / "sub")
    p = worktree.project(repo)
    assert (p.top, p.branch, p.objects) == (repo.resolve(), "main", (repo / ".git" / "objects").resolve())
    assert p.head == git(repo, "rev-parse", "HEAD")


def test_the_checkout_is_the_bottles_own_and_borrows_objects(repo: Path) -> None:
    (repo / "app.py").write_text("print('uncommitted')\n")  # the operator's work in progress stays theirs
    before = fingerprint(repo)
    state = new_bottle(repo, "a-wtone")
    co = state.path / "worktree"
    assert git(co, "symbolic-ref", "HEAD") == "refs/heads/claude-bottle/a-wtone"
    assert git(co, "rev-parse", "HEAD") == git(repo, "rev-parse", "HEAD")
    assert (co / "app.py").read_text() == "print('v1')\n"  # from HEAD, not the uncommitted file
    assert (co / ".git" / "objects" / "info" / "alternates").read_text() == f"{(repo / '.git' / 'objects').resolve()}\n"
    assert not list((co / ".git" / "objects").glob("??/*"))  # nothing copied: the objects are borrowed
    assert fingerprint(repo) == before


def test_two_bottles_commit_on_their_own_branches_and_the_operator_sees_nothing_change(repo: Path) -> None:
    before = fingerprint(repo)
    one, two = new_bottle(repo, "a-wtaaa"), new_bottle(repo, "a-wtbbb")
    for state, name in ((one, "one"), (two, "two")):
        co = state.path / "worktree"
        (co / f"{name}.txt").write_text(f"{name}\n")
        agent_git(co, "add", ".")
        agent_git(co, "commit", "-q", "-m", f"add {name}")
        agent_git(co, "branch", "-f", "main", "HEAD")  # the agent's own "main": its checkout's, not the operator's
        agent_git(co, "tag", "v9")
        # The agent tries the operator's repository through what it can see of it: the objects are read-only
        # in the bottle; here, it can only write its own .git.
    assert fingerprint(repo) == before
    with worktree.reading(one) as w1, worktree.reading(two) as w2:
        assert [s for _, s in w1.commits] == ["add one"] and [s for _, s in w2.commits] == ["add two"]
        assert w1.branch == "claude-bottle/a-wtaaa" and w2.branch == "claude-bottle/a-wtbbb"
        assert not w1.uncommitted
    assert not w1.view.exists()  # each verb's view is its own, removed after it


def test_diff_and_log_show_committed_and_uncommitted_work(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = new_bottle(repo, "a-wtdif")
    co = state.path / "worktree"
    (co / "app.py").write_text("print('v2')\n")
    agent_git(co, "commit", "-q", "-am", "v2 \x1b]52;c;Zm9v\x07please")
    (co / "new.txt").write_text("not committed\n")
    (co / "README.md").unlink()
    assert main(["log", state.slug]) == 0
    text = capsys.readouterr().out
    assert "v2 \\x1b]52;c;Zm9v\\x07please" in text and "\x1b" not in text  # the agent's bytes, escaped
    assert main(["diff", state.slug, "--stat"]) == 0
    stat = capsys.readouterr().out
    assert "app.py" in stat and "new.txt" in stat and "README.md" in stat and "3 files changed" in stat
    assert main(["diff", state.slug]) == 0
    patch = capsys.readouterr().out
    assert "+print('v2')" in patch and "+not committed" in patch and "-hello" in patch


def test_merge_squash_merge_and_a_dirty_tree(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = new_bottle(repo, "a-wtmrg")
    co = state.path / "worktree"
    for i in (1, 2):
        (co / f"f{i}.txt").write_text(f"{i}\n")
        agent_git(co, "add", ".")
        agent_git(co, "commit", "-q", "-m", f"commit {i}")
    assert worktree.pending(state) == "claude-bottle/a-wtmrg: 2 unmerged commits"
    (repo / "README.md").write_text("operator's edit\n")
    before = fingerprint(repo)
    assert main(["merge", state.slug, "--squash"]) == 1
    assert "has uncommitted changes (1 files): commit or stash them" in capsys.readouterr().err
    assert fingerprint(repo) == before  # refused: nothing changed
    git(repo, "checkout", "-q", "README.md")
    head = git(repo, "rev-parse", "HEAD")
    assert main(["merge", state.slug, "--squash"]) == 0
    assert "2 commits of claude-bottle/a-wtmrg squashed into one commit on main" in capsys.readouterr().out
    assert git(repo, "rev-list", "--count", f"{head}..HEAD") == "1"
    assert git(repo, "log", "-1", "--format=%B").startswith("claude-bottle: claude-bottle/a-wtmrg (2 commits)")
    assert (repo / "f1.txt").read_text() == "1\n" and (repo / "f2.txt").read_text() == "2\n"
    assert git(repo, "status", "--porcelain") == ""
    git(repo, "reset", "-q", "--hard", head)
    assert main(["merge", state.slug]) == 0
    assert git(repo, "rev-list", "--count", f"{head}..HEAD") == "3"  # both commits and the merge
    assert worktree.pending(state) is None  # merged: nothing would be lost


def test_apply_leaves_the_changes_uncommitted(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = new_bottle(repo, "a-wtapp")
    co = state.path / "worktree"
    (co / "app.py").write_text("print('applied')\n")
    agent_git(co, "commit", "-q", "-am", "change")
    (co / "extra.bin").write_bytes(bytes(range(256)))
    head = git(repo, "rev-parse", "HEAD")
    assert worktree.pending(state) == "claude-bottle/a-wtapp: 1 unmerged commit, uncommitted changes"
    assert main(["apply", state.slug]) == 0
    assert "2 files changed" in capsys.readouterr().err
    assert git(repo, "rev-parse", "HEAD") == head  # nothing committed
    assert (repo / "app.py").read_text() == "print('applied')\n"
    assert (repo / "extra.bin").read_bytes() == bytes(range(256))
    assert main(["merge", state.slug]) == 1  # the tree is dirty now
    assert main(["apply", state.slug]) == 1  # already there: does not apply again
    assert "do not apply" in capsys.readouterr().err


def test_the_host_runs_nothing_the_agent_wrote_in_its_checkout(tmp_path: Path, repo: Path) -> None:
    state = new_bottle(repo, "a-wthst")
    co = state.path / "worktree"
    marker = tmp_path / "ran"
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\ncat\n")
    script.chmod(0o755)
    agent_git(co, "config", "core.fsmonitor", str(script))
    agent_git(co, "config", "filter.x.clean", str(script))
    agent_git(co, "config", "diff.x.textconv", str(script))
    agent_git(co, "config", "core.pager", str(script))
    (co / ".git" / "hooks" / "post-checkout").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (co / ".git" / "hooks" / "post-checkout").chmod(0o755)
    (co / ".gitattributes").write_text("* filter=x diff=x\n")
    (co / "app.py").write_text("print('v2')\n")
    agent_git(co, "-c", "filter.x.clean=cat", "-c", "core.fsmonitor=false", "commit", "-q", "-am", "v2")
    marker.unlink(missing_ok=True)
    # And where the operator's git would look further: its alternates, re-pointed at another repository.
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q")
    (co / ".git" / "objects" / "info" / "alternates").write_text(f"{other / '.git' / 'objects'}\n")
    with worktree.reading(state) as w:
        assert [s for _, s in w.commits] == ["v2"]
        alternates = (w.view / "objects" / "info" / "alternates").read_text()
        assert alternates == f"{(repo / '.git' / 'objects').resolve()}\n"  # the operator's store, not the agent's pick
    worktree.diff(state)
    worktree.log(state)
    assert worktree.pending(state) is not None
    worktree.merge(state, squash=True)
    assert not marker.exists()  # no fsmonitor, filter, textconv, pager or hook of the agent's ran


def test_links_in_the_checkout_are_not_followed(tmp_path: Path, repo: Path) -> None:
    state = new_bottle(repo, "a-wtlnk")
    co = state.path / "worktree"
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("s3cret\n")
    (co / "leak").symlink_to(secret / "key")  # a link is recorded as a link, never read through
    patch = worktree.diff(state)
    assert "s3cret" not in patch and "+" + str(secret / "key") in patch
    (co / "dirlink").symlink_to(secret)  # a link to a host folder: recorded as a link, its files never read
    assert "s3cret" not in worktree.diff(state)
    with worktree.reading(state) as w:
        assert w.tip is not None
    (co / ".git" / "refs" / "heads" / "claude-bottle").rename(co / ".git" / "refs" / "heads" / "moved")
    (co / ".git" / "refs" / "heads" / "claude-bottle").symlink_to(secret)
    with worktree.reading(state) as w:
        assert w.tip is None  # the ref through a link is not read


def test_a_tree_entry_named_dot_git_never_reaches_the_operator(tmp_path: Path, repo: Path) -> None:
    state = new_bottle(repo, "a-wtdot")
    co = state.path / "worktree"
    blob = agent_git(co, "hash-object", "-w", "--stdin")  # an empty hook
    hooks = subprocess.run(["git", "mktree"], cwd=co, input=f"100755 blob {blob}\tpost-merge\n", text=True,
                           capture_output=True, check=True).stdout.strip()  # fmt: skip
    dotgit = subprocess.run(["git", "mktree"], cwd=co, input=f"040000 tree {hooks}\thooks\n", text=True,
                            capture_output=True, check=True).stdout.strip()  # fmt: skip
    base_tree = agent_git(co, "rev-parse", "HEAD^{tree}")
    listing = agent_git(co, "ls-tree", base_tree) + f"\n040000 tree {dotgit}\t.GIT\n"
    tree = subprocess.run(["git", "mktree"], cwd=co, input=listing, text=True, capture_output=True,
                          check=True).stdout.strip()  # fmt: skip
    commit = agent_git(co, "commit-tree", tree, "-p", "HEAD", "-m", "innocent")
    agent_git(co, "update-ref", "HEAD", commit)
    before = fingerprint(repo)
    for verb in (lambda: worktree.merge(state, squash=False), lambda: worktree.diff(state)):
        with pytest.raises(worktree.WorktreeError, match=r"^git read-tree failed: error: invalid path '\.GIT/hooks"):
            verb()
    assert not list(state.path.glob("worktree-view-*"))  # a failed read leaves no view behind
    assert fingerprint(repo) == before
    assert not (repo / ".GIT").exists()


@pytest.mark.parametrize("head", ["file", "link"])
def test_committed_work_that_would_make_a_repository_is_neither_merged_nor_applied(
    tmp_path: Path, repo: Path, head: str
) -> None:
    """Issue 21: a bare look-alike committed by the agent (HEAD, objects, refs, a config with core.worktree
    and core.fsmonitor) would make that folder of the operator's tree a repository whose config git runs."""
    state = new_bottle(repo, f"a-wtbh{head[0]}")
    co = state.path / "worktree"
    data = co / "data"
    for d in ("objects", "refs"):
        (data / d).mkdir(parents=True)
        (data / d / "keep").write_text("")
    (data / "config").write_text(
        f'[core]\n\trepositoryformatversion = 0\n\tworktree = {repo}\n\tfsmonitor = "touch {tmp_path}/ran"\n'
    )
    if head == "file":
        (data / "HEAD").write_text("ref: refs/heads/main\n")
    else:
        (data / "HEAD").symlink_to("refs/heads/main")
    agent_git(co, "add", "-A")
    agent_git(co, "commit", "-q", "-m", "fixtures")
    before = fingerprint(repo)
    for verb, word in (
        (lambda: worktree.merge(state, squash=False), "merged"),
        (lambda: worktree.apply(state), "applied"),
    ):
        with pytest.raises(worktree.WorktreeError, match=rf"holds data/HEAD \(a HEAD .*; nothing was {word}"):
            verb()
    assert fingerprint(repo) == before and not (tmp_path / "ran").exists()


def test_verbs_refuse_a_mount_mode_bottle(repo: Path) -> None:
    state = StateDir("a-mount")
    state.create()
    state.write(BottleRecord(slug="a-mount", agent="a", bottle="default", backend="docker", workspace=str(repo)))
    with pytest.raises(worktree.WorktreeError, match="is not a worktree bottle: its agent edits"):
        worktree.diff(state)
    assert worktree.pending(state) is None


def test_a_dot_git_entry_deep_in_history_is_refused_by_the_fetch(tmp_path: Path, repo: Path) -> None:
    state = new_bottle(repo, "a-wthis")
    co = state.path / "worktree"
    blob = agent_git(co, "hash-object", "-w", "--stdin")
    sub = subprocess.run(["git", "mktree"], cwd=co, input=f"100644 blob {blob}\tconfig\n", text=True,
                         capture_output=True, check=True).stdout.strip()  # fmt: skip
    listing = agent_git(co, "ls-tree", "HEAD^{tree}") + f"\n040000 tree {sub}\t.git\n"
    bad = subprocess.run(["git", "mktree"], cwd=co, input=listing, text=True, capture_output=True,
                         check=True).stdout.strip()  # fmt: skip
    first = agent_git(co, "commit-tree", bad, "-p", "HEAD", "-m", "hidden")
    second = agent_git(co, "commit-tree", "HEAD^{tree}", "-p", first, "-m", "clean again")
    agent_git(co, "update-ref", "HEAD", second)
    before = fingerprint(repo)
    refused = r"^the bottle's commits could not be fetched into .*: error: object [0-9a-f]+: hasDotgit"
    with pytest.raises(worktree.WorktreeError, match=refused):
        worktree.merge(state, squash=False)
    assert fingerprint(repo) == before


def test_cleanup_and_report_name_the_work_a_state_dir_holds(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    state = new_bottle(repo, "a-wtrep")
    co = state.path / "worktree"
    (co / "a.txt").write_text("a\nb\n")
    agent_git(co, "add", ".")
    agent_git(co, "commit", "-q", "-m", "add a")
    (co / "README.md").write_text("changed\n")
    assert (
        state.summary(work_left).describe().endswith(": claude-bottle/a-wtrep: 1 unmerged commit, uncommitted changes")
    )
    assert main(["report", state.slug, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["subject"] for c in data["commits"]] == ["add a"] and data["branch"] == "claude-bottle/a-wtrep"
    assert data["diffstat"] == "2 files changed, 3 insertions(+), 1 deletion(-)" and data["uncommitted"] is True
    assert main(["report", state.slug]) == 0
    assert "branch claude-bottle/a-wtrep: 1 commits; 2 files changed" in capsys.readouterr().out


MANIFEST = """
[bottles.default]
backend = "fake"
[bottles.default.egress]
allow = []
[agents.claude]
bottle = "default"
"""


@pytest.fixture
def fake_project(repo: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from claude_bottle.backend import _BACKENDS
    from claude_bottle.bottle.state import bottle_home
    from claude_bottle.manifest.trust import trust_file

    from .fakes import FakeBackend

    monkeypatch.setitem(_BACKENDS, "fake", "tests.unit.fakes:FakeBackend")
    FakeBackend.reset()
    (repo / "claude-bottle.toml").write_text(MANIFEST)
    trust_file(repo / "claude-bottle.toml", home=bottle_home())
    monkeypatch.chdir(repo)
    return repo


def test_start_worktree_gives_the_backend_the_checkout_and_the_objects_read_only(
    fake_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from claude_bottle.bottle.state import list_state_dirs

    from .fakes import FakeBackend

    assert main(["start", "claude", "--worktree", "--detach"]) == 0
    (state,) = list_state_dirs()
    for generation in (1, 2):
        b = FakeBackend.started[-1]
        assert b.agent_workspace == state.path / "worktree" and b.workspace == fake_project.resolve()
        objects = (fake_project / ".git" / "objects").resolve()
        assert (objects, str(objects), True) in b.mounts  # read-only, where the checkout's alternates look
        assert {".git/config", ".git/hooks"} <= set(b.protected)
        assert state.read().worktree["branch"] == f"claude-bottle/{state.slug}"  # type: ignore[index]
        assert state.read().git_protected == list(b.protected)
        if generation == 1:
            assert main(["stop", state.slug]) == 0
            assert main(["resume", state.slug, "--detach"]) == 0
    assert "a checkout of its own on claude-bottle/" in capsys.readouterr().err


def test_start_worktree_outside_a_repository_fails_before_any_work(
    fake_project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from claude_bottle.bottle.state import list_state_dirs

    from .fakes import FakeBackend

    shutil.rmtree(fake_project / ".git")
    assert main(["start", "claude", "--worktree", "--detach"]) == 1
    assert "is not a git repository: worktree mode needs one" in capsys.readouterr().err
    assert FakeBackend.calls == [] and list_state_dirs() == []
    (fake_project / "claude-bottle.toml").write_text(
        MANIFEST.replace('bottle = "default"\n', 'bottle = "default"\nworkspace_mode = "worktree"\n')
    )
    from claude_bottle.bottle.state import bottle_home
    from claude_bottle.manifest.trust import trust_file

    trust_file(fake_project / "claude-bottle.toml", home=bottle_home())
    assert main(["start", "claude", "--detach"]) == 1  # the manifest's mode, the same refusal
    assert "is not a git repository" in capsys.readouterr().err


def test_git_never_walks_or_reads_the_agents_checkout(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host reads the checkout itself, by descriptor; git gets only what was read (a walk by git
    could be raced into following a link the agent swaps in, and reads config from nested repositories)."""
    state = new_bottle(repo, "a-wtwlk")
    co = state.path / "worktree"
    (co / "new.txt").write_text("x\n")
    agent_git(co, "add", ".")
    agent_git(co, "commit", "-qm", "new")
    seen: list[tuple[str, ...]] = []
    real = command.git

    def spy(*args: object, **kw: object) -> object:
        seen.append(tuple(map(str, args)))
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(command, "git", spy)
    worktree.diff(state)
    worktree.log(state)
    inside = [a for a in seen if any(x == str(co) or x.startswith(f"{co}/") for x in a)]
    assert len(seen) > 5 and not inside, inside


def test_an_object_that_is_not_what_its_name_says_is_refused(repo: Path) -> None:
    """Shadowing: the agent plants, under the id of an object the operator has, other content; the view
    would show the fake while a merge brings in the real one. Every object is hashed as it is read."""
    import zlib

    (repo / "auth.py").write_text("CHECK_PASSWORD = True\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "auth")
    state = new_bottle(repo, "a-wtshd")
    co = state.path / "worktree"
    real = git(repo, "rev-parse", "HEAD:auth.py")
    fake = b"CHECK_PASSWORD = True  # reviewed\n"
    obj = co / ".git" / "objects" / real[:2] / real[2:]
    obj.parent.mkdir(parents=True, exist_ok=True)
    obj.write_bytes(zlib.compress(b"blob %d\0" % len(fake) + fake))
    with pytest.raises(
        worktree.WorktreeError, match=f"the bottle's object {real[:12]} does not hold what its name says"
    ):
        worktree.diff(state)
    obj.unlink()
    assert worktree.diff(state) == ""  # the same bottle, the object gone: nothing changed


def test_fifos_and_odd_files_neither_hang_nor_enter(repo: Path) -> None:
    state = new_bottle(repo, "a-wtfif")
    co = state.path / "worktree"
    os.mkfifo(co / ".gitignore")
    os.mkfifo(co / "pipe")
    (co / "sub").mkdir()
    (co / "sub" / ".git").write_text(f"gitdir: {repo / '.git'}\n")  # a nested repository's pointer: not followed
    (co / "sub" / "f.txt").write_text("in sub\n")
    stat = worktree.diff(state, stat_only=True)
    assert "sub/f.txt" in stat and "pipe" not in stat and ".gitignore" not in stat and "sub/.git" not in stat


def test_ignored_files_are_left_out_as_git_would(repo: Path) -> None:
    (repo / ".gitignore").write_text("build/\n*.log\n")
    (repo / "keep.log").write_text("tracked though ignored\n")
    git(repo, "add", "-f", ".gitignore", "keep.log")
    git(repo, "commit", "-qm", "ignores")
    state = new_bottle(repo, "a-wtign")
    co = state.path / "worktree"
    (co / "build").mkdir()
    (co / "build" / "out.o").write_text("object\n")
    (co / "debug.log").write_text("noise\n")
    (co / "keep.log").write_text("changed\n")
    (co / "sub").mkdir()
    (co / "sub" / ".gitignore").write_text("secret.txt\n")
    (co / "sub" / "secret.txt").write_text("x\n")
    stat = worktree.diff(state, stat_only=True)
    assert "keep.log" in stat and "sub/.gitignore" in stat
    assert "build/out.o" not in stat and "debug.log" not in stat and "sub/secret.txt" not in stat


def test_merge_and_apply_wait_until_the_bottle_stops(repo: Path) -> None:
    state = new_bottle(repo, "a-wtrun")
    state.update(status="running")
    for verb in (lambda: worktree.merge(state, squash=True), lambda: worktree.apply(state)):
        with pytest.raises(worktree.WorktreeError, match="is running: its work can change between your review"):
            verb()
    worktree.diff(state)  # reading is fine while it runs


def test_a_git_that_hangs_is_stopped_with_one_line(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = new_bottle(repo, "a-wthng")
    monkeypatch.setattr(command, "GIT_TIMEOUT", 0.001)
    with pytest.raises(worktree.WorktreeError, match=r"^git \S+ took over 0.001 s: stopped$"):
        worktree.diff(state)
    assert not list(state.path.glob("worktree-view-*"))


def test_work_that_lands_in_a_repository_of_the_operators_tree_is_refused(tmp_path: Path, repo: Path) -> None:
    """A review's attack: a bare mirror in an ignored build folder; the agent commits its `config`."""
    (repo / ".gitignore").write_text("build/\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore build")
    subprocess.run(["git", "init", "-q", "--bare", str(repo / "build" / "mirror.git")], check=True)
    state = new_bottle(repo, "a-wtbmr")
    co = state.path / "worktree"
    (co / "build" / "mirror.git").mkdir(parents=True)
    (co / "build" / "mirror.git" / "config").write_text(f'[core]\n\tfsmonitor = "touch {tmp_path}/ran"\n')
    agent_git(co, "add", "-f", "build/mirror.git/config")
    agent_git(co, "commit", "-q", "-m", "cache")
    before = (repo / "build" / "mirror.git" / "config").read_text()
    for verb in (lambda: worktree.merge(state, squash=False), lambda: worktree.apply(state)):
        with pytest.raises(worktree.WorktreeError, match=r"changes build/mirror.git/config, inside build/mirror.git"):
            verb()
    assert (repo / "build" / "mirror.git" / "config").read_text() == before


def test_work_that_changes_the_operators_hooks_folder_is_refused(repo: Path) -> None:
    (repo / ".githooks").mkdir()
    (repo / ".githooks" / "pre-commit").write_text("#!/bin/sh\nexit 0\n")
    git(repo, "add", ".githooks")
    git(repo, "commit", "-q", "-m", "hooks")
    git(repo, "config", "core.hooksPath", ".githooks")
    state = new_bottle(repo, "a-wthkp")
    co = state.path / "worktree"
    (co / ".githooks" / "pre-commit").write_text("#!/bin/sh\ntouch /tmp/ran\n")
    agent_git(co, "commit", "-q", "-am", "faster hook")
    with pytest.raises(
        worktree.WorktreeError, match=r"changes \.githooks/pre-commit, in the folder your git runs hooks"
    ):
        worktree.merge(state, squash=False)
    assert "exit 0" in (repo / ".githooks" / "pre-commit").read_text()
