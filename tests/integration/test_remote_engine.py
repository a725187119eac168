"""Bottles on a remote Docker engine (issue 16): a Docker-in-Docker engine on a test network, reached with
DOCKER_HOST=tcp://..., which does not see this machine's files. Its own fake internet runs inside it.

The lifecycle, the escape attempts that apply, cleanup and a headless Claude Code run against the fake
Messages API all run there; what the bottle wrote comes home into its state dir, never into the
operator's tree. Start and stop times are taken against a local bottle of the same manifest in the same
run (written to CLAUDE_BOTTLE_TEST_TIMINGS when it is set).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..fakes import dind as dind_mod
from .conftest import (
    FAKES,
    NORMAL_UID,
    NS,
    TEST_IMAGE,
    TEST_KEY,
    WHO,
    Cli,
    Internet,
    docker,
    host_git,
    made_cli,
    release_all,
    trusted,
    write_manifest,
)

UPSTREAM_IMAGE = "cbtest-upstream:1"
ROLES = {"allowed": ["private.test"], "forbidden": [], "anthropic": []}


@dataclass
class Remote:
    engine: dind_mod.Dind
    cli: Cli
    net: str
    ips: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def requests(self, role: str) -> list[dict[str, Any]]:
        """What a fake host inside the remote engine has seen (asked from inside it)."""
        script = (
            "import urllib.request as u,sys;sys.stdout.write(u.urlopen('http://127.0.0.1/_requests').read().decode())"
        )
        out = self.engine.docker("exec", f"cbtest-{role}-remote", "python3", "-c", script).stdout
        data: list[dict[str, Any]] = json.loads(out)
        return data

    def objects(self, slug: str) -> list[str]:
        """Everything of the bottle's on the remote engine: containers and volumes."""
        flt = f"label=claude-bottle.slug={slug}"
        cs = self.engine.docker("ps", "-a", "--filter", flt, "--format", "{{.Names}}").stdout.split()
        vs = self.engine.docker("volume", "ls", "--filter", flt, "--format", "{{.Name}}").stdout.split()
        return cs + vs


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t0 = time.monotonic()
    out = fn(*args)
    return out, time.monotonic() - t0


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory, internet: Internet) -> Iterator[Remote]:
    engine = dind_mod.start()
    timings: dict[str, float] = {}
    try:
        # A local bottle of the same manifest: its images go to the remote engine (no registry here), and its
        # warm start and stop are the baseline the remote ones are measured against, in this run.
        with made_cli(tmp_path_factory, internet) as lc:
            lc.run("stop", lc.start(), "--rm", check=True)  # warm: images built
            slug, timings["local_start_s"] = _timed(lc.start)
            images = json.loads((lc.states / slug / "bottle.json").read_text())["images"]
            _, timings["local_stop_s"] = _timed(lambda: lc.run("stop", slug, "--rm", check=True))
        engine.load([dind_mod.BASE, TEST_IMAGE, images["guard"], images["agent"]])
        engine.build(
            UPSTREAM_IMAGE,
            {
                "Dockerfile": f"FROM {TEST_IMAGE}\nCOPY upstream.py /fake/upstream.py\n".encode(),
                "upstream.py": (FAKES / "upstream.py").read_bytes(),
            },
        )
        net = "cbtest-inet-remote"
        engine.docker("network", "create", "--label", "claude-bottle-test=1", net)
        ips = {}
        for role, aliases in ROLES.items():
            name = f"cbtest-{role}-remote"
            alias_args = [a for alias in [f"{role}.test", *aliases] for a in ("--network-alias", alias)]
            engine.docker(
                "run", "-d", "--name", name, "--label", "claude-bottle-test=1", "--network", net, *alias_args,
                UPSTREAM_IMAGE, "python3", "/fake/upstream.py", "--port", "80", "--name", f"{role}.test",
            )  # fmt: skip
            ips[role] = engine.docker(
                "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name
            ).stdout.strip()
        root = tmp_path_factory.mktemp("remote")
        ws = root / "workspace"
        ws.mkdir()
        (ws / "hello.txt").write_text("from the operator\n")
        c = Cli(root / "home", ws, extra_env={"DOCKER_HOST": engine.host})
        manifest = write_manifest(ws, Internet(net, ips))
        if os.getuid() == 0:
            for p in [ws, *ws.iterdir()]:
                os.chown(p, NORMAL_UID, NORMAL_UID)
        trusted(c, manifest)
        r = Remote(engine, c, net, ips, timings)
        yield r
        for slug in c.ls():
            c.run("keep", slug, "--release")
            c.run("stop", slug, "--rm")
    finally:
        engine.close()
        out = os.environ.get("CLAUDE_BOTTLE_TEST_TIMINGS")
        if out and timings:
            Path(out).write_text(json.dumps(timings, indent=2) + "\n")


def test_a_bottle_runs_on_the_remote_engine_and_its_work_comes_home(remote: Remote) -> None:
    c = remote.cli
    slug, remote.timings["remote_start_s"] = _timed(c.start)
    record = json.loads((c.states / slug / "engine.json").read_text())
    assert record == {"name": "DOCKER_HOST", "endpoint": remote.engine.host}
    # It runs there, not here, and nothing of this machine's files is bound into it.
    assert len([o for o in remote.objects(slug) if o.endswith(("-agent", "-egress", "-net"))]) == 3
    assert docker("ps", "-a", "--filter", f"label=claude-bottle.slug={slug}", "--format", "{{.Names}}").stdout == ""
    for svc in ("agent", "egress", "net"):
        mounts = json.loads(
            remote.engine.docker("inspect", "--format", "{{json .Mounts}}", f"{c.namespace}-{slug}-{svc}").stdout
        )
        assert mounts and {m["Type"] for m in mounts} == {"volume"}, mounts
    assert c.ls()[slug]["status"] == "running"
    rc, out = c.sh(slug, "cat /workspace/hello.txt && echo made-there > /workspace/made.txt && cat ~/.aws/credentials")
    assert rc == 0 and "from the operator" in out and "aws_access_key_id = AKIA" in out, out
    # The guard there: an allowed host passes, another is refused, and the audit lines come home.
    rc, out = c.sh(slug, "curl -sS -m 10 http://allowed.test/")
    assert rc == 0 and "allowed.test" in out, out
    rc, out = c.sh(slug, "curl -sS -m 10 -o /dev/null -w '%{http_code}' http://forbidden.test/")
    assert out.strip().endswith("403"), out
    lines = c.audit(slug)
    assert any(ln.get("host") == "allowed.test" and ln.get("decision") == "allow" for ln in lines)
    assert any(ln.get("host") == "forbidden.test" and ln.get("decision") == "deny" for ln in lines)
    # A live grant reaches the remote guard's policy without a restart.
    c.run("grant", slug, "--egress", "forbidden.test:80", "--private", check=True)
    deadline = time.monotonic() + 15
    while True:
        rc, out = c.sh(slug, "curl -sS -m 10 -o /dev/null -w '%{http_code}' http://forbidden.test/")
        if out.strip().endswith("200") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert out.strip().endswith("200"), out
    _, remote.timings["remote_stop_s"] = _timed(lambda: c.run("stop", slug, check=True))
    home = c.states / slug / "copy"  # copy mode: not a repository
    assert (home / "made.txt").read_text() == "made-there\n"
    assert not (c.cwd / "made.txt").exists()  # the operator's tree is never written
    assert remote.objects(slug) == []  # containers and volumes gone from the remote engine
    assert c.run("verify", slug).returncode == 0  # the chain came home whole
    assert (c.states / slug / "claude-home").is_dir()
    # Resumed, the bottle goes on with what it made (seeded from the copy that came home).
    c.run("resume", slug, "--detach", check=True)
    rc, out = c.sh(slug, "cat /workspace/made.txt")
    assert rc == 0 and "made-there" in out, out
    pulled = c.run("pull", slug, check=True)
    assert pulled.stdout.strip() == str(home)
    c.run("stop", slug, "--rm", check=True)
    assert remote.objects(slug) == []


def test_escapes_that_apply_on_a_remote_engine(remote: Remote) -> None:
    c = remote.cli
    slug = c.start()
    try:
        # No way around the guard: straight to an address, or to an outside name.
        for ip in remote.ips.values():
            rc, out = c.sh(slug, f"curl -sS -m 5 --noproxy '*' http://{ip}/")
            assert rc != 0, out
        rc, out = c.sh(slug, "getent hosts example.com || echo NXDOMAIN")
        assert "NXDOMAIN" in out, out
        rc, out = c.sh(slug, "iptables -F 2>&1; echo rc=$?")
        assert "rc=0" not in out, out
        # The credential lives in the guard's volume only; the agent sees a placeholder.
        rc, out = c.sh(
            slug,
            f"ls /etc/claude-bottle 2>&1; grep -rl {TEST_KEY} /workspace /home /etc /tmp /bottle-run 2>/dev/null; env",
        )
        assert "No such file" in out and TEST_KEY not in out, out
        # What it plants in the workspace cannot reach this machine through the trip home: a link out, a
        # pipe, a link named like a folder it hopes we write through.
        rc, out = c.sh(
            slug,
            "cd /workspace && ln -s /etc/passwd evil && mkfifo pipe && ln -s /tmp out && echo ok > plain.txt "
            "&& mkdir -p sub && ln -s ../../../../../../etc sub/up",
        )
        assert rc == 0, out
    finally:
        c.run("stop", slug, check=True)
    home = c.states / slug / "copy"  # copy mode: not a repository
    assert (home / "plain.txt").read_text() == "ok\n"
    assert (home / "evil").is_symlink() and (home / "evil").readlink() == Path("/etc/passwd")
    assert not (home / "pipe").exists()
    assert "workspace/pipe" in (c.states / slug / "home-skipped.txt").read_text()
    c.run("stop", slug, "--rm", check=True)


def test_headless_claude_code_on_the_remote_engine(remote: Remote) -> None:
    c = remote.cli
    before = len([q for q in remote.requests("anthropic") if q["path"].startswith("/v1/messages")])
    r = c.run("start", "claude", "--prompt", "please TOOL: echo made-by-claude > /workspace/out.txt", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAKE-UPSTREAM: the command ran." in r.stdout
    new = [q for q in remote.requests("anthropic") if q["path"].startswith("/v1/messages")][before:]
    assert new and all(next(v for k, v in q["headers"].items() if k.lower() == "x-api-key") == TEST_KEY for q in new)
    outs = list(c.states.glob("*/copy/out.txt"))
    assert outs and outs[0].read_text().strip() == "made-by-claude"
    assert not (c.cwd / "out.txt").exists()
    slug = outs[0].parents[1].name
    to = c.cwd.parent / "pulled"
    c.run("pull", slug, "--to", str(to), check=True)
    assert (to / "out.txt").read_text().strip() == "made-by-claude"
    assert c.run("pull", slug, "--to", str(to)).returncode != 0  # never over what exists
    c.run("stop", slug, "--rm", check=True)


def test_cleanup_on_a_remote_engine_brings_the_work_home_first(remote: Remote) -> None:
    c = remote.cli
    slug = c.start()
    rc, out = c.sh(slug, "echo unsaved > /workspace/unsaved.txt")
    assert rc == 0, out
    r = c.run("cleanup", "--yes", check=True)
    assert f"brought {slug}'s log, transcripts and workspace home" in r.stdout, r.stdout
    assert remote.objects(slug) == []
    assert (c.states / slug / "copy" / "unsaved.txt").read_text() == "unsaved\n"
    # An engine that no longer answers is named, and its bottles are left alone.
    (c.states / slug / "engine.json").write_text('{"name": "gone", "endpoint": "tcp://127.0.0.1:1"}\n')
    record = json.loads((c.states / slug / "bottle.json").read_text())
    record["status"] = "running"
    (c.states / slug / "bottle.json").write_text(json.dumps(record))
    row = c.ls()[slug]
    assert str(row["status"]).startswith("unknown (engine gone at tcp://127.0.0.1:1 does not answer)"), row
    r = c.run("cleanup", "--dry-run", check=True)
    assert "engine gone (tcp://127.0.0.1:1) does not answer" in r.stdout and f"kept state dir: {slug}" in r.stdout
    record["status"] = "stopped"
    (c.states / slug / "bottle.json").write_text(json.dumps(record))
    (c.states / slug / "engine.json").write_text(json.dumps({"name": "DOCKER_HOST", "endpoint": remote.engine.host}))
    c.run("stop", slug, "--rm", check=True)


def test_worktree_mode_on_a_remote_engine(remote: Remote) -> None:
    """The bottle's commits travel home in its checkout: `log`, `diff` and `merge` work as on this machine,
    and the operator's object store went in read-only."""
    base = Path(tempfile.mkdtemp(prefix="cbtest-git-"))
    base.chmod(0o755)
    ws, home = base / "ws", base / "userhome"
    for d in (ws, home):
        d.mkdir()
        os.chown(d, NORMAL_UID, NORMAL_UID)
    c = Cli(remote.cli.home.parent / "wt-home", ws, extra_env={"DOCKER_HOST": remote.engine.host})
    trusted(c, write_manifest(ws, Internet(remote.net, remote.ips)))
    try:
        assert host_git(ws, "init", "-q", "-b", "main").returncode == 0
        host_git(ws, "config", "user.name", "Operator")
        host_git(ws, "config", "user.email", "op@example.test")
        (ws / "app.py").write_text("print('v1')\n")
        host_git(ws, "add", "app.py", "claude-bottle.toml")
        assert host_git(ws, "commit", "-qm", "init").returncode == 0
        objects = ws / ".git" / "objects"
        slug = json.loads(c.run("start", "claude", "--worktree", "--detach", "--json", check=True).stdout)["slug"]
        rc, out = c.sh(
            slug,
            "set -e; cd /workspace; git symbolic-ref HEAD; echo far > far.txt; git add far.txt; "
            f"git commit -qm 'add far'; ! touch {objects}/planted 2>/dev/null; git log --format=%s",
        )
        assert rc == 0 and f"refs/heads/claude-bottle/{slug}" in out and "add far" in out, out
        c.run("stop", slug, check=True)
        assert "add far" in c.run("log", slug, check=True).stdout
        assert "+far" in c.run("diff", slug, check=True).stdout
        assert not (ws / "far.txt").exists()
        r = c.run("merge", slug)
        assert r.returncode == 0, r.stderr
        assert (ws / "far.txt").read_text() == "far\n"
    finally:
        release_all(c)
        shutil.rmtree(base, ignore_errors=True)


def test_start_context_names_the_engine_and_the_bottle_keeps_it(remote: Remote, tmp_path: Path) -> None:
    """`start --context NAME`: a docker context (made in a config dir of the test's own), recorded with the
    bottle, which every later verb reaches whatever the environment says."""
    config = tmp_path / "docker-config"
    config.mkdir()
    env = {**os.environ, "DOCKER_CONFIG": str(config)}
    env.pop("DOCKER_HOST", None)
    made = subprocess.run(
        ["docker", "context", "create", "cbtest-far", "--docker", f"host={remote.engine.host}"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    c = Cli(remote.cli.home, remote.cli.cwd, extra_env={"DOCKER_CONFIG": str(config)})
    assert "DOCKER_HOST" not in c.env()
    out = c.run("start", "claude", "--context", "cbtest-far", "--detach", "--json", check=True).stdout
    slug = json.loads(out)["slug"]
    try:
        assert json.loads((c.states / slug / "engine.json").read_text()) == {
            "name": "cbtest-far",
            "endpoint": remote.engine.host,
        }
        rc, out = c.sh(slug, "cat /workspace/hello.txt")
        assert rc == 0 and "from the operator" in out, out
        assert remote.objects(slug)
    finally:
        c.run("stop", slug, "--rm", check=True)
    assert remote.objects(slug) == []


@pytest.mark.parametrize("who", WHO[1:])  # root's own runs are every test above
def test_a_normal_user_runs_a_bottle_on_the_remote_engine(remote: Remote, who: str) -> None:
    """A user in the docker group, not root: the work comes home into their own state dir, as theirs."""
    root = Path(tempfile.mkdtemp(prefix="cbtest-user-"))
    root.chmod(0o755)
    ws = root / "workspace"
    ws.mkdir()
    (ws / "hello.txt").write_text("mine\n")
    c = Cli(root / "home", ws, user=NORMAL_UID, extra_env={"DOCKER_HOST": remote.engine.host})
    manifest = write_manifest(ws, Internet(remote.net, remote.ips))
    for p in [root, *root.rglob("*")]:
        os.chown(p, NORMAL_UID, NORMAL_UID)
    try:
        trusted(c, manifest)
        slug = c.start()
        rc, out = c.sh(slug, "cat /workspace/hello.txt && echo made > /workspace/by-user.txt && id -u")
        assert rc == 0 and "mine" in out and "60999" in out, out  # the bottle user there
        c.run("stop", slug, check=True)
        got = c.states / slug / "copy" / "by-user.txt"  # home: this user's
        assert got.read_text() == "made\n" and got.stat().st_uid == NORMAL_UID
        assert remote.objects(slug) == []
        c.run("stop", slug, "--rm", check=True)
    finally:
        release_all(c)
        shutil.rmtree(root, ignore_errors=True)


def test_a_gvisor_bottle_on_the_remote_engine_and_one_it_cannot_carry(remote: Remote) -> None:
    """isolation = "gvisor" on a remote engine with the runtime registered (issue 23), and the one line when
    the runtime it names is not there (before anything is sent or built)."""
    c = remote.cli
    r = c.run("start", "claude", "--detach", "--isolation", "gvisor", CLAUDE_BOTTLE_GVISOR_RUNTIME="cbtest-nosuch")
    assert r.returncode != 0
    last = [ln for ln in r.stderr.splitlines() if ln.strip()][-1]
    assert "on the remote engine" in last and "no runtime 'cbtest-nosuch'" in last, r.stderr
    slug = c.start("claude", "--isolation", "gvisor")
    try:
        rc, out = c.sh(slug, "uname -r; echo remote-gvisor > /workspace/g.txt")
        assert rc == 0 and out.splitlines()[0] == "4.4.0" != os.uname().release, out
        agent = f"{NS}-{slug}-agent"
        assert remote.engine.docker("inspect", "--format", "{{.HostConfig.Runtime}}", agent).stdout.strip() == (
            "claude-bottle-gvisor"
        )
    finally:
        c.run("stop", slug, "--rm")
    assert remote.objects(slug) == []
