"""Worktree mode on the real engine (issue 15): two bottles on one repository commit on branches of their
own inside their bottles; the operator's branch, index, hooks, config and uncommitted files are untouched;
`diff`, `log`, `merge --squash` and `apply` bring the work home; a dirty tree refuses `merge`."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import Cli, host_git


def fingerprint(ws: Path) -> dict[str, str]:
    git = ws / ".git"
    return {
        "refs": host_git(ws, "for-each-ref", "--format=%(refname) %(objectname)").stdout,
        "head": (git / "HEAD").read_text(),
        "index": (git / "index").read_bytes().hex(),
        "config": (git / "config").read_text(),
        "hooks": " ".join(sorted(f"{p.name}:{p.read_text()}" for p in (git / "hooks").iterdir())),
        "status": host_git(ws, "status", "--porcelain", "--untracked-files=all").stdout,
        "wip": (ws / "wip.txt").read_text(),
    }


def test_two_worktree_bottles_on_one_repository(git_project: Cli) -> None:
    cli, ws = git_project, git_project.cwd
    assert host_git(ws, "init", "-q", "-b", "main").returncode == 0
    host_git(ws, "config", "user.name", "Operator")  # who the operator's commits are from (merge --squash)
    host_git(ws, "config", "user.email", "op@example.test")
    (ws / "app.py").write_text("print('v1')\n")
    host_git(ws, "add", "app.py", "claude-bottle.toml")
    assert host_git(ws, "commit", "-qm", "init").returncode == 0
    (ws / ".git" / "hooks" / "pre-commit").write_text("#!/bin/sh\nexit 0\n")
    (ws / "wip.txt").write_text("the operator's uncommitted work\n")
    host_git(ws, "add", "wip.txt")  # staged, not committed
    before = fingerprint(ws)
    objects = ws / ".git" / "objects"
    slugs = []
    for _ in range(2):
        out = cli.run("start", "claude", "--worktree", "--detach", "--json", check=True).stdout
        slugs.append(json.loads(out)["slug"])
    one, two = slugs
    for slug, name in ((one, "one"), (two, "two")):
        rc, out = cli.sh(
            slug,
            "set -e; cd /workspace; test ! -e wip.txt; git symbolic-ref HEAD; "
            f"echo {name} > {name}.txt; git add {name}.txt; git commit -qm 'add {name}'; "
            # What the agent cannot do to the operator: their objects are read-only, the checkout's own
            # control files too; its 'main' and tags are its checkout's.
            f"! touch {objects}/planted 2>/dev/null; ! sh -c 'echo x >> .git/config' 2>/dev/null; "
            "git branch -f main HEAD; git tag v9; git log --format=%s",
        )
        assert rc == 0, out
        assert f"refs/heads/claude-bottle/{slug}" in out and f"add {name}" in out
    assert fingerprint(ws) == before
    assert not (objects / "planted").exists()
    for slug, name in ((one, "one"), (two, "two")):
        log = cli.run("log", slug, check=True).stdout
        assert f"add {name}" in log and ("add one" in log) == (name == "one")
    cli.sh(one, "cd /workspace && echo changed > app.py")  # uncommitted, in the bottle
    diff = cli.run("diff", one, check=True).stdout
    assert "+one" in diff and "+changed" in diff and "-print('v1')" in diff
    # merge: refused while the bottle runs (its work could still change), then while the operator's tree
    # is dirty, then squashed once it is clean.
    r = cli.run("merge", one, "--squash")
    assert r.returncode == 1 and f"{one} is running: its work can change" in r.stderr, r.stderr
    cli.run("stop", one, check=True)
    cli.run("stop", two, check=True)
    r = cli.run("merge", one, "--squash")
    assert r.returncode == 1 and "has uncommitted changes" in r.stderr, r.stderr
    assert fingerprint(ws) == before
    assert host_git(ws, "commit", "-qm", "wip").returncode == 0
    head = host_git(ws, "rev-parse", "HEAD").stdout.strip()
    r = cli.run("merge", one, "--squash")
    assert r.returncode == 0, r.stderr
    assert host_git(ws, "rev-list", "--count", f"{head}..HEAD").stdout.strip() == "1"
    assert (ws / "one.txt").read_text() == "one\n" and (ws / "one.txt").stat().st_uid == 1000
    assert host_git(ws, "status", "--porcelain").stdout == ""
    # apply: the other bottle's work as uncommitted changes.
    r = cli.run("apply", two)
    assert r.returncode == 0, r.stderr
    assert (ws / "two.txt").read_text() == "two\n"
    assert host_git(ws, "rev-parse", "HEAD").stdout.strip() != head
    assert "?? two.txt" in host_git(ws, "status", "--porcelain").stdout
    # What removing the state would lose is said, for a stopped bottle.
    plan = cli.run("cleanup", "--dry-run").stdout
    assert f"claude-bottle/{two}: 1 unmerged commit" in plan, plan
    report = json.loads(cli.run("report", two, "--json", check=True).stdout)
    assert [c["subject"] for c in report["commits"]] == ["add two"]


def test_worktree_mode_needs_a_repository(git_project: Cli) -> None:
    r = git_project.run("start", "claude", "--worktree", "--detach")
    assert r.returncode == 1
    assert "is not a git repository: worktree mode needs one" in r.stderr
    assert git_project.ls() == {}  # refused before anything was made
