"""start -> ls -> exec -> stop on the real engine, and the user errors around them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import Cli, docker


def containers(slug: str) -> list[str]:
    return docker("ps", "-a", "--filter", f"label=claude-bottle.slug={slug}", "--format", "{{.Names}}").stdout.split()


def networks(slug: str) -> list[str]:
    return docker(
        "network", "ls", "--filter", f"label=claude-bottle.slug={slug}", "--format", "{{.Name}}"
    ).stdout.split()


def test_start_ls_exec_stop(cli: Cli) -> None:
    slug = cli.start()
    try:
        assert sorted(containers(slug)) == [f"claude-bottle-{slug}-{s}" for s in ("agent", "egress", "net")]
        row = cli.ls()[slug]
        assert (row["agent"], row["backend"], row["status"]) == ("claude", "docker", "running")

        # exec runs as the agent user, in /workspace, and returns the command's exit code.
        r = cli.run("exec", slug, "--", "sh", "-c", "id -u; pwd; exit 5")
        assert r.returncode == 5
        uid, cwd = r.stdout.split()
        assert uid != "0" and cwd == "/workspace"
        # A unique prefix works wherever a slug does; the tools the agent needs are there.
        r = cli.run(
            "exec",
            slug[:-2],
            "--",
            "sh",
            "-c",
            "curl --version && git --version && python3 --version && claude --version",
        )
        assert r.returncode == 0, r.stderr
        assert "Claude Code" in r.stdout

        state = cli.home / "state" / slug
        assert (state.stat().st_mode & 0o777) == 0o700
        record = json.loads((state / "bottle.json").read_text())
        assert record["schema_version"] == 1 and record["status"] == "running"
        assert (state / "compose.json").is_file() and (state / "egress.jsonl").is_file()
    finally:
        stop = cli.run("stop", slug)
    assert stop.returncode == 0, stop.stderr
    assert containers(slug) == [] and networks(slug) == []
    assert cli.ls()[slug]["status"] == "stopped"
    assert cli.run("stop", slug, "--rm").returncode == 0
    assert slug not in cli.ls()


def test_unknown_slug_and_bad_manifest(cli: Cli, tmp_path: Path) -> None:
    r = cli.run("exec", "nosuch-zzzzz", "--", "true")
    assert r.returncode == 1 and "no bottle matches 'nosuch-zzzzz'" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[bottles.default.egress]\nalow = ['x.test']\n[agents.claude]\n")
    before = docker("ps", "-aq").stdout.split()
    r = cli.run("start", "claude", "--manifest", str(bad))
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"error: {bad}: bottles.default.egress: unknown key 'alow' (valid keys: allow, deny, engine, networks)"
    )
    assert docker("ps", "-aq").stdout.split() == before


def test_missing_engine_is_exit_3_with_the_fix(cli: Cli) -> None:
    r = cli.run("start", "claude", "--detach", DOCKER_HOST="unix:///nonexistent/docker.sock")
    assert r.returncode == 3
    assert "Docker engine not reachable at unix:///nonexistent/docker.sock" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2  # "starting <slug>" and the error
    assert not [p for p in (cli.home / "state").iterdir() if p.is_dir()] if (cli.home / "state").exists() else True
    r = cli.run("doctor", DOCKER_HOST="unix:///nonexistent/docker.sock")
    assert r.returncode == 3 and "fail engine" in r.stdout


def test_ctrl_c_mid_start_leaves_nothing(cli: Cli) -> None:
    before_dirs = set((cli.home / "state").iterdir()) if (cli.home / "state").exists() else set()
    proc = subprocess.Popen(
        [sys.executable, "-m", "claude_bottle", "start", "claude", "--detach"],
        cwd=cli.cwd,
        env=cli.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    slug = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and slug is None:
        names = docker(
            "ps", "-a", "--filter", "label=claude-bottle.backend=docker", "--format", '{{.Label "claude-bottle.slug"}}'
        ).stdout.split()
        new = [n for n in names if (cli.home / "state" / n).exists() and (cli.home / "state" / n) not in before_dirs]
        slug = new[0] if new else None
        time.sleep(0.05)
    assert slug, "start never created containers"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:  # it won the race and finished: then a stop must still leave nothing
        cli.run("stop", slug, "--rm", check=True)
    else:
        assert proc.returncode == 130, err
    assert containers(slug) == [] and networks(slug) == []
    assert not (cli.home / "state" / slug).exists()
