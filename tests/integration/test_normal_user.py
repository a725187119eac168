"""The whole lifecycle run by a normal user in the docker group (issue 14): no root anywhere on the host
side, the agent as that user, every verb working, nothing left behind."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

from .conftest import NS, WHO, Cli, Internet, docker, made_cli

BOTTLE_UID = 60999


@pytest.fixture(scope="module")
def ucli(tmp_path_factory: pytest.TempPathFactory, internet: Internet) -> Iterator[Cli]:
    with made_cli(tmp_path_factory, internet, WHO[-1]) as c:  # under root: uid 1000 through setpriv
        yield c


def test_a_normal_users_lifecycle(ucli: Cli) -> None:
    uid = ucli.user if ucli.user is not None else os.getuid()
    doctor = ucli.run("doctor")
    assert "ok   compose v2" in doctor.stdout and "ok   engine" in doctor.stdout, doctor.stdout + doctor.stderr
    slug = ucli.start()
    row = ucli.ls()[slug]
    assert row["status"] == "running"
    # The agent is the bottle user (a copy of its own, handed to it through the engine: this user cannot
    # chown); what it writes there is not this user's, so git here refuses it.
    rc, out = ucli.sh(
        slug,
        "id -u; echo hi > /workspace/by-agent; echo x > ~/.claude/by-agent; "
        "curl -sS -m 10 http://allowed.test/ >/dev/null; echo $?",
    )
    assert rc == 0 and out.split() == [str(BOTTLE_UID), "0"], out
    state = ucli.states / slug
    assert (state / "copy" / "by-agent").stat().st_uid == BOTTLE_UID
    assert not (ucli.cwd / "by-agent").exists()
    # Everything else on the host side is this user's, and private.
    assert state.stat().st_uid == uid and (state.stat().st_mode & 0o777) == 0o700
    assert ucli.run("grant", slug, "--egress", "forbidden.test:80", "--private").returncode == 0
    time.sleep(1.0)  # the guard re-reads its policy within half a second
    rc, out = ucli.sh(slug, "curl -sS -m 10 -o /dev/null -w '%{http_code}' http://forbidden.test/")
    assert out == "200", out
    logs = ucli.run("logs", slug, "--egress")
    assert logs.returncode == 0 and '"host": "forbidden.test"' in logs.stdout
    assert ucli.run("stop", slug).returncode == 0
    assert ucli.ls()[slug]["status"] == "stopped"
    assert not (state / "guard" / "secrets.json").exists()
    r = ucli.run("apply", slug)
    assert r.returncode == 0 and "1 added" in r.stderr, r.stderr
    assert (ucli.cwd / "by-agent").read_text() == "hi\n" and (ucli.cwd / "by-agent").stat().st_uid == uid
    r = ucli.run("resume", slug, "--detach")
    assert r.returncode == 0, r.stderr
    rc, out = ucli.sh(slug, "curl -sS -m 10 -o /dev/null -w '%{http_code}' http://forbidden.test/")
    assert out == "200", out  # the grant survived the resume
    # cleanup, in this namespace: the running bottle's containers go, its state is kept (it was live).
    r = ucli.run("cleanup", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert docker("ps", "-a", "--filter", f"label=claude-bottle.slug={slug}", "-q").stdout.strip() == ""
    assert ucli.ls()[slug]["status"] == "stopped"
    r = ucli.run("stop", slug, "--rm")  # the bottle user's files removed through the engine
    assert r.returncode == 0, r.stderr
    assert not state.exists()
    assert json.loads(ucli.run("ls", "--json").stdout) == []


def test_a_normal_users_mount_mode_agent_is_that_user(ucli: Cli) -> None:
    uid = ucli.user if ucli.user is not None else os.getuid()
    r = ucli.run("start", "claude", "--detach", "--mount")
    assert r.returncode == 0, r.stderr
    slug = r.stdout.strip().splitlines()[-1]
    rc, out = ucli.sh(slug, "id -u; echo hi > /workspace/by-mounted-agent")
    assert rc == 0 and out.split() == [str(uid)], out
    assert (ucli.cwd / "by-mounted-agent").stat().st_uid == uid
    assert ucli.run("stop", slug, "--rm").returncode == 0
    assert NS in ucli.namespace
