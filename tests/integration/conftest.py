"""Integration fixtures: a real engine (required, never skipped), a fake internet, bottles via the CLI."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TEST_IMAGE = "python:3.11-slim-bookworm"


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


@dataclass
class Internet:
    """A test-made network with two web hosts; nothing here is a real address."""

    network: str
    allowed_ip: str
    forbidden_ip: str


@pytest.fixture(scope="session")
def internet() -> Iterator[Internet]:
    tag = secrets.token_hex(3)
    net = f"cbtest-inet-{tag}"
    docker("network", "create", "--label", "claude-bottle-test=1", net)
    names = []
    try:
        ips = {}
        for role in ("allowed", "forbidden"):
            name = f"cbtest-{role}-{tag}"
            names.append(name)
            docker(
                "run",
                "-d",
                "--name",
                name,
                "--label",
                "claude-bottle-test=1",
                "--network",
                net,
                "--network-alias",
                f"{role}.test",
                TEST_IMAGE,
                "sh",
                "-c",
                f"mkdir -p /srv && echo 'hello from {role}' > /srv/index.html && cd /srv && "
                "exec python3 -m http.server 80",
            )
            ips[role] = docker(
                "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name
            ).stdout.strip()
        yield Internet(net, ips["allowed"], ips["forbidden"])
    finally:
        if names:
            docker("rm", "-f", *names, check=False)
        docker("network", "rm", net, check=False)


@dataclass
class Cli:
    home: Path
    cwd: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        env.update(CLAUDE_BOTTLE_HOME=str(self.home), **extra)
        return env

    def run(
        self, *args: str, check: bool = False, timeout: float = 900, **env: str
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "claude_bottle", *args],
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

    def start(self, agent: str = "claude") -> str:
        out = self.run("start", agent, "--detach", "--json", check=True).stdout
        return str(json.loads(out)["slug"])

    def ls(self) -> dict[str, dict[str, object]]:
        return {r["slug"]: r for r in json.loads(self.run("ls", "--json", check=True).stdout)}


def write_manifest(directory: Path, internet: Internet) -> Path:
    """The starter manifest from `init`, plus the two edits the README's demo makes."""
    from claude_bottle.cli.init import write_starter

    path = write_starter(directory / "claude-bottle.toml", force=True)
    text = path.read_text()
    text = text.replace("allow = [\n", 'allow = [\n  { host = "allowed.test", ports = [80], private = true },\n')
    text = text.replace('# networks = ["my-services"]', f'networks = ["{internet.network}"]')
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, internet: Internet) -> Iterator[Cli]:
    root = tmp_path_factory.mktemp("bottles")
    ws = root / "workspace"
    ws.mkdir()
    write_manifest(ws, internet)
    c = Cli(root / "home", ws)
    yield c
    # Whatever a test left: stop and remove it, by the CLI first, then by label.
    for slug in c.ls():
        c.run("stop", slug, "--rm")


@pytest.fixture(scope="module")
def bottle(cli: Cli) -> Iterator[str]:
    slug = cli.start()
    yield slug
    cli.run("stop", slug, "--rm")
