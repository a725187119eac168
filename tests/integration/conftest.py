"""Integration fixtures: a real engine (required, never skipped), a fake internet, bottles via the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

TEST_IMAGE = "python:3.11-slim-bookworm"
DOCKER_SOCKET = "/var/run/docker.sock"
# This run's namespace: every bottle object the suite makes is named and labelled with it, and the CLI
# under test sees and cleans up nothing else (a user's bottles on the same engine survive the suite).
NS = f"cbtest-{secrets.token_hex(3)}"
STATE = f"state.{NS}"  # the namespace's state root under a CLAUDE_BOTTLE_HOME


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def engine() -> None:
    """Fail, never skip: a missing engine must turn the run red, not quietly green."""
    try:
        ok = docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30).returncode == 0
    except FileNotFoundError:
        ok = False
    if not ok:
        pytest.fail(
            "Docker engine not reachable: run ./scripts/setup (or deselect with -m 'not integration')", pytrace=False
        )


FAKES = Path(__file__).parents[1] / "fakes"
FAKESMOL = Path(__file__).parents[1] / "fakesmol"
TEST_KEY = "sk-ant-api03-TESTONLY-" + "k" * 40  # the "real" key: only the guard and the fake upstream see it
TEST_GITHUB_TOKEN = "ghp_TESTONLY" + "g" * 30


@dataclass
class Internet:
    """A test-made network with fake hosts; nothing here is a real address."""

    network: str
    ips: dict[str, str]

    @property
    def allowed_ip(self) -> str:
        return self.ips["allowed"]

    @property
    def forbidden_ip(self) -> str:
        return self.ips["forbidden"]

    def requests(self, host: str) -> list[dict[str, Any]]:
        """What a fake host has seen (fetched from the test host, straight to the container)."""
        url = f"http://{self.ips[host]}:80/_requests"
        with urllib.request.urlopen(url, timeout=10) as resp:
            data: list[dict[str, Any]] = json.load(resp)
        return data


def _bare_repo(root: Path) -> Path:
    """A git repository served over git's dumb HTTP protocol (static files) by the fake github host."""
    work, srv = root / "repo-work", root / "srv"
    srv.mkdir()
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True, env=env)
    (work / "README").write_text("cloned through the guard\n")
    subprocess.run(["git", "-C", str(work), "add", "README"], check=True, env=env)
    subprocess.run(["git", "-C", str(work), "commit", "-qm", "init"], check=True, env=env)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(srv / "repo.git")], check=True, env=env)
    subprocess.run(["git", "-C", str(srv / "repo.git"), "update-server-info"], check=True, env=env)
    for p in srv.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    srv.chmod(0o755)
    return srv


@pytest.fixture(scope="session")
def internet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Internet]:
    tag = secrets.token_hex(3)
    net = f"cbtest-inet-{tag}"
    docker("network", "create", "--label", "claude-bottle-test=1", net)
    srv = _bare_repo(tmp_path_factory.mktemp("github"))
    names = []
    hosts = {  # role -> extra aliases
        "allowed": ["private.test"],
        "forbidden": [],
        "anthropic": [],
        "github": [],
    }
    try:
        ips = {}
        for role, aliases in hosts.items():
            name = f"cbtest-{role}-{tag}"
            names.append(name)
            alias_args = [a for alias in [f"{role}.test", *aliases] for a in ("--network-alias", alias)]
            mounts = ["-v", f"{FAKES}:/fake:ro"] + (["-v", f"{srv}:/srv:ro"] if role == "github" else [])
            docker(
                "run",
                "-d",
                "--name",
                name,
                "--label",
                "claude-bottle-test=1",
                "--network",
                net,
                *alias_args,
                *mounts,
                TEST_IMAGE,
                "python3",
                "/fake/upstream.py",
                "--port",
                "80",
                "--name",
                f"{role}.test",
            )
            ips[role] = docker(
                "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name
            ).stdout.strip()
        inet = Internet(net, ips)
        deadline = time.monotonic() + 30
        for role in hosts:
            while True:
                try:
                    inet.requests(role)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        yield inet
    finally:
        if names:
            docker("rm", "-f", *names, check=False)
        docker("network", "rm", net, check=False)


@dataclass
class Cli:
    home: Path
    cwd: Path
    namespace: str = NS
    user: int | None = None  # run the CLI as this uid with the docker group only (a normal user), not as us
    # The smolmachines SDK the CLI sees: the fake (tests/fakesmol, its machines in this home) unless a test
    # asks for the real one, which then keeps its machine database in this home too (HOME, XDG dirs).
    real_smol: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)

    def prefix(self) -> list[str]:
        if self.user is None:
            return []
        docker_gid = Path(DOCKER_SOCKET).stat().st_gid
        return ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", f"--groups={docker_gid}", "--"]

    @property
    def states(self) -> Path:
        return self.home / ("state" if self.namespace == "claude-bottle" else f"state.{self.namespace}")

    def env(self, **extra: str) -> dict[str, str]:
        drop = ("PYTEST_", "ANTHROPIC_", "CLAUDE_CODE_OAUTH_TOKEN", "GITHUB_TOKEN", "GH_TOKEN")
        if self.user is not None:
            drop += ("COVERAGE_",)  # its data files live where a normal user may not write
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        if self.user is not None:
            env["HOME"] = str(self.home.parent / "user-home")
        env.update(
            CLAUDE_BOTTLE_HOME=str(self.home),
            CLAUDE_BOTTLE_NAMESPACE=self.namespace,
            ANTHROPIC_API_KEY=TEST_KEY,
            GITHUB_TOKEN=TEST_GITHUB_TOKEN,
        )
        if self.real_smol:
            smolhome = self.home.parent / "smolhome"
            env.update(
                HOME=str(smolhome),
                XDG_DATA_HOME=str(smolhome / ".local" / "share"),
                XDG_CACHE_HOME=str(smolhome / ".cache"),
            )
        else:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(FAKESMOL), env.get("PYTHONPATH", "")) if p)
            env["FAKE_SMOL_DB"] = str(self.home.parent / "fakesmol" / "db.json")
        env.update(self.extra_env)
        env.update(extra)
        return env

    def argv(self, *args: str) -> list[str]:
        return [*self.prefix(), sys.executable, "-m", "claude_bottle", *args]

    def run(
        self, *args: str, check: bool = False, timeout: float = 540, **env: str
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.argv(*args),
            cwd=self.cwd,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"claude-bottle {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
        return proc

    def start(self, agent: str = "claude", *extra: str) -> str:
        out = self.run("start", agent, "--detach", "--json", *extra, check=True).stdout
        return str(json.loads(out)["slug"])

    def sh(self, slug: str, script: str, *, stdin: str | None = None) -> tuple[int, str]:
        """Run a shell script in the bottle as the agent; (exit code, stdout+stderr)."""
        proc = subprocess.run(
            self.argv("exec", slug, "--", "sh", "-c", script),
            cwd=self.cwd,
            env=self.env(),
            input=stdin or "",
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        return proc.returncode, proc.stdout + proc.stderr

    def audit(self, slug: str) -> list[dict[str, Any]]:
        out = self.run("logs", slug, "--egress", check=True).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_line(self, slug: str, timeout: float = 15, **match: Any) -> dict[str, Any]:
        """The last audit line with these fields, waiting for it (lines land as decisions are made)."""
        path = self.states / slug / "egress.jsonl"
        deadline = time.monotonic() + timeout
        while True:
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
            found = [ln for ln in lines if all(ln.get(k) == v for k, v in match.items())]
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no audit line with {match} in {slug} after {timeout}s; last: {lines[-3:]}")
            time.sleep(0.05)

    def end_of(self, slug: str, line: dict[str, Any]) -> dict[str, Any]:
        """An allowed connection's closing line (bytes, duration, status), written when it ends."""
        return self.wait_line(slug, kind="end", conn=line["conn"])

    def ls(self) -> dict[str, dict[str, object]]:
        return {r["slug"]: r for r in json.loads(self.run("ls", "--json", check=True).stdout)}


# What every test manifest's agent runs under: scripts/test runs the escape and attack suites (and the
# verbs' own) once more with CLAUDE_BOTTLE_TEST_ISOLATION=gvisor.
ISOLATION = os.environ.get("CLAUDE_BOTTLE_TEST_ISOLATION", "container")


def write_manifest(directory: Path, internet: Internet) -> Path:
    """The starter manifest from `init`, plus the demo's two edits and credential routes to fake upstreams."""
    from claude_bottle.cli.init import write_starter

    path = write_starter(directory / "claude-bottle.toml", force=True)
    text = path.read_text()
    text = text.replace(
        "allow = [\n",
        'allow = [\n  { host = "allowed.test", ports = [80], private = true },\n  "private.test:80",\n',
    )
    text = text.replace('# networks = ["my-services"]', f'networks = ["{internet.network}"]')
    if ISOLATION != "container":  # the gVisor pass of scripts/test runs the suites it names under gVisor
        text = text.replace('# isolation = "gvisor"', f'isolation = "{ISOLATION}"')
    # Credential routes to the fake upstreams; the keys come from the CLI's environment (Cli.env).
    text += (
        "\n[bottles.default.credentials.anthropic]\n"
        'source = "env:ANTHROPIC_API_KEY"\nupstream = "http://anthropic.test"\n'
        "\n[bottles.default.credentials.github]\n"
        'source = "env:GITHUB_TOKEN"\nupstream = "http://github.test"\n'
    )
    path.write_text(text)
    return path


def trusted(cli: Cli, manifest: Path) -> Path:
    """The operator reviewed this manifest and trusts it (as `claude-bottle trust` in a script)."""
    cli.run("trust", str(manifest), check=True)
    return manifest


# Who runs the CLI: the invoker (root here, on a user's project) and, when the invoker is root, a normal
# user in the docker group as well (uid 1000 through setpriv: no account is made or changed).
WHO = ["invoker", "docker-group user"] if os.getuid() == 0 else ["invoker"]
if os.environ.get("CLAUDE_BOTTLE_TEST_WHO"):  # scripts/test's gVisor pass: the invoker alone (the kernel's test)
    WHO = [os.environ["CLAUDE_BOTTLE_TEST_WHO"]]
NORMAL_UID = 1000


@contextlib.contextmanager
def made_cli(tmp_path_factory: pytest.TempPathFactory, internet: Internet, who: str = "invoker") -> Iterator[Cli]:
    """A CLI in a throwaway home with a trusted manifest in its project, run by `who`."""
    # pytest's own temp dirs are root's alone: a normal user's files live in one of their own.
    root = tmp_path_factory.mktemp("bottles") if who == "invoker" else Path(tempfile.mkdtemp(prefix="cbtest-user-"))
    ws = root / "workspace"
    ws.mkdir()
    c = Cli(root / "home", ws, user=None if who == "invoker" else NORMAL_UID)
    manifest = write_manifest(ws, internet)
    if os.getuid() == 0:
        # A user's project (the agent runs as its owner and can write it); for the normal user, all of it.
        for p in [root, *root.rglob("*")] if c.user is not None else [ws]:
            os.chown(p, NORMAL_UID, NORMAL_UID)
    try:
        trusted(c, manifest)
        yield c
    finally:
        # Whatever a test left: stop and remove it.
        for slug in c.ls():
            c.run("stop", slug, "--rm")
        if c.user is not None:
            shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def user_project(
    tmp_path_factory: pytest.TempPathFactory, internet: Internet, name: str, *, edit: Callable[[str], str] | None = None
) -> Iterator[Cli]:
    """A project owned by a regular user (uid 1000), as when root runs claude-bottle on someone's checkout,
    with the test manifest (changed by `edit`) trusted; its bottles released and removed afterwards."""
    root = tmp_path_factory.mktemp(name)
    ws = root / "workspace"
    ws.mkdir()
    manifest = write_manifest(ws, internet)
    if edit is not None:
        manifest.write_text(edit(manifest.read_text()))
    if os.getuid() == 0:
        os.chown(ws, NORMAL_UID, NORMAL_UID)
    c = Cli(root / "home", ws)
    trusted(c, manifest)
    try:
        yield c
    finally:
        release_all(c)


def release_all(c: Cli) -> None:
    """Every bottle a test's CLI made, released if kept and removed (the test's own, nothing else)."""
    for slug in c.ls():
        c.run("keep", slug, "--release")
        c.run("stop", slug, "--rm")


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, internet: Internet) -> Iterator[Cli]:
    with made_cli(tmp_path_factory, internet) as c:
        yield c


@pytest.fixture(scope="module")
def bottle(cli: Cli) -> Iterator[str]:
    slug = cli.start()
    yield slug
    cli.run("stop", slug, "--rm")


@pytest.fixture(scope="session", autouse=True)
def users_bottle(internet: Internet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A user's own bottle in the default namespace, running before the suite starts: the suite must
    leave it exactly as it found it (same containers, still running), whatever its tests clean up."""
    root = tmp_path_factory.mktemp("users-bottle")
    ws = root / "workspace"
    ws.mkdir()
    if os.getuid() == 0:
        os.chown(ws, 1000, 1000)
    user = Cli(root / "home", ws, namespace="claude-bottle")
    trusted(user, write_manifest(ws, internet))
    slug = user.start()
    names = [f"claude-bottle-{slug}-{svc}" for svc in ("agent", "egress", "net")]

    def state() -> list[str]:
        return docker("inspect", "--format", "{{.Id}} {{.State.Status}}", *names, check=False).stdout.split("\n")

    before = state()
    assert all(line.endswith(" running") for line in before[:3]), before
    try:
        yield slug
        after = state()
        assert after == before, f"the suite touched a bottle it did not make: {before} -> {after}"
        assert user.ls()[slug]["status"] == "running"
    finally:
        user.run("stop", slug, "--rm")


def host_git(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """git as the workspace's owner (uid 1000, a normal user), as the operator would run it."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(ws.parent / "userhome"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "u",
        "GIT_AUTHOR_EMAIL": "u@u",
        "GIT_COMMITTER_NAME": "u",
        "GIT_COMMITTER_EMAIL": "u@u",
    }
    return subprocess.run(
        ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "git", *args],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def git_project(tmp_path: Path, internet: Internet) -> Iterator[Cli]:
    """A project a normal user (uid 1000) owns, where that user can run git: outside pytest's root-only
    temporary root. Removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="cbtest-git-"))
    base.chmod(0o755)
    ws, home = base / "ws", base / "userhome"
    for d in (ws, home):
        d.mkdir()
        os.chown(d, 1000, 1000)
    c = Cli(tmp_path / "cb-home", ws)
    trusted(c, write_manifest(ws, internet))
    try:
        yield c
    finally:
        release_all(c)
        shutil.rmtree(base, ignore_errors=True)
