"""cleanup on the real engine: leftovers made by hand and by a SIGKILLed start; exactly those go."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import NS, STATE, TEST_IMAGE, Cli, docker


def names(kind: str, prefix: str) -> set[str]:
    if kind == "container":
        out = docker("ps", "-a", "--filter", f"name={prefix}", "--format", "{{.Names}}").stdout
    else:
        out = docker("network", "ls", "--filter", f"name={prefix}", "--format", "{{.Name}}").stdout
    return set(out.split())


@pytest.fixture
def not_ours(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A Compose project and a container that are not claude-bottle's: cleanup must not touch them."""
    tag = secrets.token_hex(3)
    compose = tmp_path / "compose.yaml"
    compose.write_text(f"services:\n  web:\n    image: {TEST_IMAGE}\n    command: sleep 300\n")
    project, container = f"cbtest-other-{tag}", f"cbtest-notours-{tag}"
    docker("compose", "-p", project, "-f", str(compose), "up", "-d")
    docker("run", "-d", "--name", container, TEST_IMAGE, "sleep", "300")
    try:
        yield {"project": project, "container": container}
    finally:
        docker("compose", "-p", project, "-f", str(compose), "down", "--timeout", "1", check=False)
        docker("rm", "-f", container, check=False)


def killed_start(cli: Cli) -> str:
    """A `start` SIGKILLed after its containers exist: the crash C4 is about."""
    before = {p.name for p in (cli.home / STATE).iterdir()} if (cli.home / STATE).exists() else set()
    proc = subprocess.Popen(
        [sys.executable, "-m", "claude_bottle", "start", "claude", "--detach"],
        cwd=cli.cwd,
        env=cli.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        new = ({p.name for p in (cli.home / STATE).iterdir()} if (cli.home / STATE).exists() else set()) - before
        if new and names("container", f"{NS}-{next(iter(new))}-"):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return next(iter(new))
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("start never created containers")


def test_cleanup_reaps_exactly_the_leftovers(cli: Cli, not_ours: dict[str, str]) -> None:
    live = cli.start()
    kept = cli.start()
    orphan = cli.start()
    for slug in (kept, orphan):
        cli.run("stop", slug, check=True)
    cli.run("keep", kept, check=True)
    crashed = killed_start(cli)
    # Strays: ours by their labels (a bottle's container and network outside any Compose project) ...
    stray = f"{NS}-stray-{secrets.token_hex(3)[:5]}"
    ours = ["--label", f"claude-bottle.namespace={NS}", "--label", f"claude-bottle.slug={stray.removeprefix(NS + '-')}"]
    docker("run", "-d", "--name", stray, *ours, TEST_IMAGE, "sleep", "300")
    docker("network", "create", *ours, f"{stray}-net")
    # ... and a container that only shares the name prefix: not ours, never touched.
    lookalike = f"{NS}-lookalike-{secrets.token_hex(2)}"
    docker("run", "-d", "--name", lookalike, TEST_IMAGE, "sleep", "300")

    rows = cli.ls()
    assert rows[crashed]["status"] == "abandoned (owner died mid-start)"
    assert rows[kept]["preserved"] == "kept by the operator"

    dry = cli.run("cleanup", "--dry-run", check=True).stdout
    for expected in (
        f"compose project: {NS}-{live}",
        f"compose project: {NS}-{crashed}",
        f"stray container: {stray}",
        f"stray network: {stray}-net",
        f"orphan state dir: {orphan}",
        f"kept state dir: {kept}",
    ):
        assert expected in dry, dry
    assert lookalike not in dry
    assert names("container", f"{NS}-") - {lookalike}  # a dry run changes nothing

    try:
        r = cli.run("cleanup", "--yes")
        assert r.returncode == 0, r.stdout + r.stderr
        assert names("container", f"{NS}-") == {lookalike}
    finally:
        docker("rm", "-f", lookalike, check=False)
    assert names("network", f"{NS}-") == set()
    assert not [
        p
        for p in json.loads(docker("compose", "ls", "--all", "--format", "json").stdout)
        if p["Name"].startswith(f"{NS}-")
    ]
    left = set(cli.ls())
    assert kept in left and live in left  # preserved, and live when planned (now stopped, resumable)
    assert orphan not in left and crashed not in left
    assert cli.ls()[live]["status"] == "stopped"
    # Nothing that is not ours was touched.
    assert names("container", not_ours["container"]) == {not_ours["container"]}
    assert f"{not_ours['project']}-web-1" in names("container", not_ours["project"])
    # The seed's rule, run again: the bottle that was live is now stopped and not preserved, so its
    # state is an orphan this time (the plan shows what would be lost); the preserved one stays.
    again = cli.run("cleanup", "--yes", check=True).stdout
    assert "compose project" not in again and f"orphan state dir: {live}" in again
    assert set(cli.ls()) == {kept}
    cli.run("keep", kept, "--release", check=True)
