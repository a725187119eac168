"""Issue 21 finding 1, on the real engine: the operator's own tools run nothing an agent wrote, in the default
configuration, while the bottle runs and after it.

The tools, as they behave: a git-aware shell prompt runs `git status` in every folder the operator enters;
an editor (VS Code's git extension, JetBrains) finds every folder holding a `.git` (or a HEAD) and runs
`git rev-parse --show-toplevel` and `git status` there. Each runs as the workspace's owner (uid 1000) and as
the CLI's user (root here), wherever each can reach: the operator's workspace, the bottle's own tree in the
state dir, and every copy the project gives back (`apply`, `merge`, `pull --to`).

The agent plants every way known to make git run a command: a `commondir` to a folder of its own with a
`core.fsmonitor`, a nested repository with one, a bare look-alike (HEAD, objects, refs, a config naming
core.worktree and core.fsmonitor) in a folder that existed before it started, a `.git` at the top of a
workspace that was not a repository. The controls show each attack works when the agent's tree is the
operator's own (mount mode, opted into).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import NORMAL_UID, Cli, Internet, release_all, trusted, write_manifest

BOTTLE_UID = 60999

# The agent's planted commands leave their mark in MARKS (a folder anyone may write).
PLANT = r"""
set -e
cd /workspace
CFG='[core]\n\trepositoryformatversion = 0\n\tbare = false\n\tworktree = %s\n\tfsmonitor = "touch %s/%s; false"\n'
evil() { printf "$CFG" "$1" "$MARKS" "$2" > "$3"; }
# A bare look-alike in a folder that was there before the agent started.
mkdir -p src/objects src/refs && printf 'ref: refs/heads/main\n' > src/HEAD && evil "$WS/src" src-bare src/config
# A nested repository with an fsmonitor.
mkdir -p sub && git -C sub init -q && printf '[core]\n\tfsmonitor = "touch %s/sub; false"\n' "$MARKS" >> sub/.git/config
# A .git at the top: a commondir to a folder of its own, or a repository where there was none.
if [ -d .git ]; then
  mkdir -p evil/objects evil/refs && cp -r .git/refs/. evil/refs/ && evil "$WS" commondir evil/config
  printf '../evil\n' > .git/commondir
else
  git init -q . && printf '[core]\n\tfsmonitor = "touch %s/top; false"\n' "$MARKS" >> .git/config
fi
echo planted
"""


def as_user(uid: int | None, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """git as `uid` (None: as us), with no system configuration and a home of its own."""
    prefix = [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(
        [*prefix, "git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def tools_everywhere(root: Path, uid: int | None) -> list[str]:
    """A prompt's `git status` in every folder under root, and an editor's scan: rev-parse and status in
    every folder that holds a `.git` or a HEAD. Returns what git said about ownership (for the record)."""
    said = []
    folders = [root] + [p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()]
    for d in folders:
        for args in (("status",), ("rev-parse", "--show-toplevel")):
            try:
                r = as_user(uid, d, *args)
            except PermissionError:
                continue
            if "dubious ownership" in r.stderr:
                said.append(str(d))
    return said


@pytest.fixture
def marks() -> Iterator[Path]:
    m = Path(tempfile.mkdtemp(prefix="cbtest-marks-"))
    m.chmod(0o777)
    try:
        yield m
    finally:
        shutil.rmtree(m, ignore_errors=True)


def _project(internet: Internet, tmp_path: Path, *, repo: bool) -> tuple[Path, Cli]:
    base = Path(tempfile.mkdtemp(prefix="cbtest-tools-"))
    base.chmod(0o755)
    ws = base / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "src" / "app.py").write_text("print('v1')\n")
    c = Cli(tmp_path / "cb-home", ws)
    trusted(c, write_manifest(ws, internet))
    if repo:
        for args in (("init", "-q", "-b", "main"), ("add", "-A"), ("commit", "-qm", "init")):
            subprocess.run(["git", "-c", "user.name=u", "-c", "user.email=u@u", *args], cwd=ws, check=True,
                           capture_output=True)  # fmt: skip
    for p in [ws, *ws.rglob("*")]:
        os.lchown(p, NORMAL_UID, NORMAL_UID)
    return base, c


@pytest.fixture
def repo_project(internet: Internet, tmp_path: Path) -> Iterator[Cli]:
    base, c = _project(internet, tmp_path, repo=True)
    try:
        yield c
    finally:
        release_all(c)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def plain_project(internet: Internet, tmp_path: Path) -> Iterator[Cli]:
    base, c = _project(internet, tmp_path, repo=False)
    try:
        yield c
    finally:
        release_all(c)
        shutil.rmtree(base, ignore_errors=True)


def _plant(cli: Cli, slug: str, marks: Path, ws_in_bottle: str = "/workspace") -> None:
    rc, out = cli.sh(slug, f"export MARKS={marks} WS={ws_in_bottle}; {PLANT}")
    assert rc == 0 and "planted" in out, out


def _no_marks(marks: Path, when: str) -> None:
    assert not list(marks.iterdir()), (
        f"{when}: git on the host ran the agent's commands: {sorted(p.name for p in marks.iterdir())}"
    )


def _tree_of(cli: Cli, slug: str, name: str) -> Path:
    return cli.states / slug / name


def test_a_repository_workspace_gets_a_checkout_git_on_the_host_refuses(repo_project: Cli, marks: Path) -> None:
    cli = repo_project
    ws = cli.cwd
    slug = cli.start()
    checkout = _tree_of(cli, slug, "worktree")
    assert checkout.is_dir() and checkout.stat().st_uid == BOTTLE_UID  # the bottle user's, not the operator's
    _plant(cli, slug, marks, ws_in_bottle="/workspace")
    # During the run: the operator's workspace is untouched; the checkout is refused by git itself.
    assert not (ws / "sub").exists() and not (ws / "src" / "HEAD").exists()
    for uid in (NORMAL_UID, None):
        tools_everywhere(ws, uid)
    refused = tools_everywhere(checkout, None)
    assert str(checkout) in refused and str(checkout / "sub") in refused and str(checkout / "src") in refused
    _no_marks(marks, "during the run")
    # The control: the same tree, owned by the operator (as mount mode leaves it), runs the agent's command.
    control = marks.parent / f"{marks.name}-control"
    subprocess.run(["cp", "-a", "--no-preserve=ownership", str(checkout), str(control)], check=True)
    try:
        as_user(None, control / "sub", "status")
        assert (marks / "sub").exists(), "the control: an operator-owned copy of the agent's tree runs its code"
        (marks / "sub").unlink()
    finally:
        shutil.rmtree(control, ignore_errors=True)
    # After it: stopped, the checkout still refused; the work, committed, comes home through merge, judged.
    rc, out = cli.sh(slug, "cd /workspace && rm -f .git/commondir && git add -A src && git -c user.name=a "
                     "-c user.email=a@a commit -qm planted && echo ok")  # fmt: skip
    assert rc == 0 and "ok" in out, out
    assert cli.run("stop", slug).returncode == 0
    tools_everywhere(checkout, None)
    _no_marks(marks, "after the run")
    r = cli.run("merge", slug)
    assert r.returncode == 1 and "holds src/HEAD" in r.stderr and "nothing was merged" in r.stderr, r.stderr
    for uid in (NORMAL_UID, None):
        tools_everywhere(ws, uid)
    _no_marks(marks, "after merge")


def test_a_plain_workspace_gets_a_copy_and_apply_brings_home_no_repository(plain_project: Cli, marks: Path) -> None:
    cli = plain_project
    ws = cli.cwd
    slug = cli.start()
    copy = _tree_of(cli, slug, "copy")
    assert copy.stat().st_uid == BOTTLE_UID and (copy / "src" / "app.py").stat().st_uid == BOTTLE_UID
    _plant(cli, slug, marks)
    rc, out = cli.sh(slug, "echo agent > /workspace/src/new.txt && id -u")
    assert rc == 0 and str(BOTTLE_UID) in out, out
    for uid in (NORMAL_UID, None):
        tools_everywhere(ws, uid)
    refused = tools_everywhere(copy, None)
    assert str(copy) in refused and str(copy / "src") in refused
    _no_marks(marks, "during the run")
    assert not (ws / "src" / "new.txt").exists()  # the operator's files change only by apply
    assert cli.run("stop", slug).returncode == 0
    r = cli.run("diff", slug, "--stat")
    assert r.returncode == 0 and "A src/new.txt" in r.stdout, r.stdout + r.stderr
    r = cli.run("apply", slug)
    assert r.returncode == 0, r.stderr
    assert "not applied: src/HEAD: a HEAD file" in r.stderr and "not applied: sub/.git" in r.stderr, r.stderr
    assert "not applied: .git: a .git" in r.stderr, r.stderr
    assert (ws / "src" / "new.txt").read_text() == "agent\n" and not (ws / ".git").exists()
    for uid in (NORMAL_UID, None):
        tools_everywhere(ws, uid)
        tools_everywhere(copy, uid)
    _no_marks(marks, "after apply")
    assert cli.run("stop", slug, "--rm").returncode == 0 and not (cli.states / slug).exists()


def test_mount_mode_is_the_opt_in_without_the_promise(plain_project: Cli, marks: Path) -> None:
    """The control for the whole class: mount mode, announced as such, and git there runs what the agent
    wrote while it runs (the end-of-run settle then quarantines it)."""
    cli = plain_project
    ws = cli.cwd
    r = cli.run("start", "claude", "--detach", "--mount")
    assert r.returncode == 0, r.stderr
    assert "mounted: the agent writes your files directly" in r.stderr
    slug = r.stdout.strip().splitlines()[-1]
    _plant(cli, slug, marks, ws_in_bottle=str(ws))
    as_user(NORMAL_UID, ws / "src", "status")
    assert (marks / "src-bare").exists(), "mount mode: a bare look-alike in the operator's folder runs its config"
    (marks / "src-bare").unlink()
    r = cli.run("stop", slug)
    assert r.returncode == 0 and "src/config" in r.stderr, r.stderr
    for uid in (NORMAL_UID, None):
        tools_everywhere(ws, uid)
    _no_marks(marks, "after a mount-mode run is settled")
    cli.run("keep", slug, "--release")
