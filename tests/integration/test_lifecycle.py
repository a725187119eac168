"""start -> ls -> exec -> stop on the real engine, and the user errors around them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import NS, STATE, Cli, Internet, docker, trusted, write_manifest


def containers(slug: str) -> list[str]:
    return docker("ps", "-a", "--filter", f"label=claude-bottle.slug={slug}", "--format", "{{.Names}}").stdout.split()


def networks(slug: str) -> list[str]:
    return docker(
        "network", "ls", "--filter", f"label=claude-bottle.slug={slug}", "--format", "{{.Name}}"
    ).stdout.split()


def test_start_ls_exec_stop(cli: Cli) -> None:
    slug = cli.start()
    try:
        assert sorted(containers(slug)) == [f"{NS}-{slug}-{s}" for s in ("agent", "egress", "net")]
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

        state = cli.home / STATE / slug
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
        f"error: {bad}: bottles.default.egress: unknown key 'alow' "
        "(valid keys: allow, ask, ask_timeout, deny, engine, networks)"
    )
    assert docker("ps", "-aq").stdout.split() == before


def test_missing_engine_is_exit_3_with_the_fix(cli: Cli) -> None:
    r = cli.run("start", "claude", "--detach", DOCKER_HOST="unix:///nonexistent/docker.sock")
    assert r.returncode == 3
    assert "Docker engine not reachable at unix:///nonexistent/docker.sock" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2  # "starting <slug>" and the error
    assert not [p for p in (cli.home / STATE).iterdir() if p.is_dir()] if (cli.home / STATE).exists() else True
    r = cli.run("doctor", DOCKER_HOST="unix:///nonexistent/docker.sock")
    assert r.returncode == 3 and "fail engine" in r.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_mid_start_leaves_nothing(cli: Cli, tmp_path: Path, sig: int) -> None:
    """The signal lands in the window on purpose: a `docker` shim runs the real `compose up`, then says so
    and waits, so Ctrl-C (or a kill) arrives while the containers exist and the start is not finished."""
    shim, real = tmp_path / "shim", shutil.which("docker")
    shim.mkdir()
    mark = tmp_path / "containers-up"
    (shim / "docker").write_text(
        f"#!{sys.executable}\n"
        "import os, subprocess, sys, time\n"
        f"rc = subprocess.call(['{real}', *sys.argv[1:]])\n"
        "if 'compose' in sys.argv and 'up' in sys.argv:\n"
        f"    open('{mark}', 'w').close()\n"
        "    time.sleep(60)\n"
        "sys.exit(rc)\n"
    )
    (shim / "docker").chmod(0o755)
    proc = subprocess.Popen(
        cli.argv("start", "claude", "--detach"),
        cwd=cli.cwd,
        env=cli.env(PATH=f"{shim}:{os.environ['PATH']}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not mark.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "start never brought its containers up"
        time.sleep(0.05)
    slug = next(d.name for d in (cli.home / STATE).iterdir() if containers(d.name))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err  # interrupted mid-start, never a finished start
    assert containers(slug) == [] and networks(slug) == []
    assert not (cli.home / STATE / slug).exists()


def test_the_agent_can_edit_the_workspace_of_whoever_runs_the_cli(tmp_path: Path, internet: Internet) -> None:
    """A project owned by the CLI's user (root here: a server, a CI runner, a dev container), in mount mode:
    the agent edits it, as that uid, with no capabilities at all and no way to gain any."""
    ws = tmp_path / "own-project"
    ws.mkdir()
    (ws / "README").write_text("mine\n")
    (ws / "README").chmod(0o644)
    c = Cli(tmp_path / "home", ws)
    trusted(c, write_manifest(ws, internet))
    slug = c.run("start", "claude", "--detach", "--mount", check=True).stdout.strip().splitlines()[-1]
    try:
        script = (
            "id -u; grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status; "
            "echo edited >> /workspace/README && echo new > /workspace/made-by-agent && echo wrote"
        )
        r = c.run("exec", slug, "--", "sh", "-c", script)
        assert r.returncode == 0, r.stdout + r.stderr
        lines = r.stdout.split("\n")
        assert lines[0] == str(os.getuid())
        caps = dict(line.split(":\t") for line in lines[1:5])
        assert caps == {
            "CapPrm": "0000000000000000",
            "CapEff": "0000000000000000",
            "CapBnd": "0000000000000000",
            "NoNewPrivs": "1",
        }
        assert (ws / "README").read_text() == "mine\nedited\n"
        made = ws / "made-by-agent"
        assert made.read_text() == "new\n" and made.stat().st_uid == os.getuid()
    finally:
        c.run("stop", slug, "--rm")
