"""The agent under gVisor (issue 23), on the real engine: it really runs on gVisor's kernel (what the
sandbox reports, not a flag read back) while its guard stays on the host's; every verb works; a request the
engine cannot carry is one line before any work. The escape and attack suites run under gVisor too
(scripts/test's gVisor pass, CLAUDE_BOTTLE_TEST_ISOLATION=gvisor)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from .conftest import NS, STATE, Cli, Internet, docker, host_git, made_cli

HOST_KERNEL = os.uname().release
RUNTIME = "claude-bottle-gvisor"


@pytest.fixture(scope="module")
def gcli(tmp_path_factory: pytest.TempPathFactory, internet: Internet) -> Iterator[Cli]:
    with made_cli(tmp_path_factory, internet) as c:
        yield c


def kernel(c: Cli, slug: str) -> str:
    rc, out = c.sh(slug, "uname -r")
    assert rc == 0, out
    return out.strip()


def runtime_of(slug: str, service: str) -> str:
    return docker("inspect", "--format", "{{.HostConfig.Runtime}}", f"{NS}-{slug}-{service}").stdout.strip()


def test_the_agent_runs_on_gvisors_kernel_and_its_guard_on_the_hosts(gcli: Cli) -> None:
    slug = gcli.start("claude", "--isolation", "gvisor")
    try:
        assert kernel(gcli, slug) == "4.4.0" != HOST_KERNEL  # gVisor's Sentry answers uname
        rc, out = gcli.sh(slug, "cat /proc/version")
        assert "4.4.0" in out and HOST_KERNEL not in out, out
        guard = docker("exec", f"{NS}-{slug}-egress", "uname", "-r").stdout.strip()
        assert guard == HOST_KERNEL  # the guard is ours and stays on runc
        assert (runtime_of(slug, "agent"), runtime_of(slug, "egress"), runtime_of(slug, "net")) == (
            RUNTIME, "runc", "runc",
        )  # fmt: skip
        # The seal holds: an allowed host through the guard, the rest refused and on record.
        rc, out = gcli.sh(slug, "curl -s -o /dev/null -w '%{http_code}' http://allowed.test/")
        assert out.strip() == "200", out
        rc, out = gcli.sh(slug, "curl -s -o /dev/null -w '%{http_code}' http://forbidden.test/")
        assert out.strip() == "403", out
        lines = gcli.audit(slug)
        assert any(ln.get("host") == "forbidden.test" and ln.get("decision") == "deny" for ln in lines), lines[-3:]
        record = json.loads((gcli.states / slug / "bottle.json").read_text())
        assert record["manifest"]["bottle"]["isolation"] == "gvisor"
        # The agent's files are the bottle user's on the host, as under runc.
        rc, out = gcli.sh(slug, "echo made > /workspace/made.txt && id -u")
        assert rc == 0, out
        assert gcli.run("stop", slug).returncode == 0
        # A new generation keeps its isolation.
        r = gcli.run("resume", slug, "--detach")
        assert r.returncode == 0, r.stderr
        assert kernel(gcli, slug) == "4.4.0" and runtime_of(slug, "agent") == RUNTIME
        r = gcli.run("logs", slug)
        assert r.returncode == 0, r.stderr
    finally:
        gcli.run("stop", slug, "--rm")
    assert slug not in gcli.ls()


def test_the_manifest_says_gvisor_and_start_can_say_container(gcli: Cli) -> None:
    manifest = gcli.cwd / "claude-bottle.toml"
    before = manifest.read_text()
    manifest.write_text(before.replace('# isolation = "gvisor"', 'isolation = "gvisor"'))
    try:
        gcli.run("trust", str(manifest), check=True)
        slug = gcli.start()
        other = gcli.start("claude", "--isolation", "container")
        try:
            assert runtime_of(slug, "agent") == RUNTIME and kernel(gcli, slug) == "4.4.0"
            assert runtime_of(other, "agent") == "runc" and kernel(gcli, other) == HOST_KERNEL
        finally:
            gcli.run("stop", slug, "--rm")
            gcli.run("stop", other, "--rm")
    finally:
        manifest.write_text(before)
        gcli.run("trust", str(manifest), check=True)


def test_an_engine_without_the_runtime_is_one_line_before_any_work(gcli: Cli) -> None:
    before = set(gcli.ls())
    r = gcli.run("start", "claude", "--detach", "--isolation", "gvisor", CLAUDE_BOTTLE_GVISOR_RUNTIME="cbtest-nosuch")
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "no runtime 'cbtest-nosuch'" in lines[-1] and "./scripts/setup" in lines[-1], r.stderr
    assert "building" not in r.stderr and "Traceback" not in r.stderr
    assert set(gcli.ls()) == before  # nothing made
    r = gcli.run("start", "claude", "--detach", "--isolation", "vm")
    assert r.returncode != 0 and "choose from 'container', 'gvisor'" in r.stderr, r.stderr


def test_a_worktree_bottle_under_gvisor_commits_on_its_branch(git_project: Cli) -> None:
    ws = git_project.cwd
    host_git(ws, "init", "-q", "-b", "main")
    (ws / "README").write_text("hello\n")
    host_git(ws, "add", "README", "claude-bottle.toml")
    host_git(ws, "commit", "-qm", "first")
    slug = git_project.start("claude", "--isolation", "gvisor")
    try:
        assert kernel(git_project, slug) == "4.4.0"
        rc, out = git_project.sh(
            slug, "cd /workspace && echo from-gvisor > note && git add note && git commit -qm 'under gvisor'"
        )
        assert rc == 0, out
        assert git_project.run("stop", slug).returncode == 0
        log = git_project.run("log", slug, check=True).stdout
        assert "under gvisor" in log, log
        host_git(ws, "config", "user.name", "Operator")
        host_git(ws, "config", "user.email", "op@example.test")
        r = git_project.run("merge", slug, "--squash")
        assert r.returncode == 0, r.stderr
        assert (ws / "note").read_text() == "from-gvisor\n"
    finally:
        git_project.run("stop", slug, "--rm")
    assert not (git_project.home / STATE / slug).exists()
