"""`top` on the real engine: the data for scripts (`--once --json`) of a real bottle that waits on a request
and has reached a host, and the live view in a real terminal (tmux, 80x24) as the operator sees it, its keys
answering the request."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time

from .conftest import Cli


def first_pending(cli: Cli, slug: str, timeout: float = 30) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in json.loads(cli.run("requests", "--json", check=True).stdout) if r["slug"] == slug]
        if rows:
            return dict(rows[0])
        assert time.monotonic() < deadline, "no request"
        time.sleep(0.2)


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True, timeout=30).stdout


def screen(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session)


def wait_screen(session: str, text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        shot = screen(session)
        if text in shot:
            return shot
        assert time.monotonic() < deadline, f"{text!r} never on screen:\n{shot}"
        time.sleep(0.2)


def test_top_shows_a_waiting_bottle_in_an_80x24_terminal_and_its_key_answers_it(cli: Cli) -> None:
    slug = cli.start()
    session = f"cbtest-top-{slug}"
    asking = subprocess.Popen(
        cli.argv("exec", slug, "--", "bottle-capability", "request", "egress:forbidden.test:80",
                 "--reason", "the docs", "--wait", "90"),
        cwd=cli.cwd, env=cli.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        cli.sh(slug, "curl -s -m 5 http://allowed.test/ >/dev/null; curl -s -m 5 http://forbidden.test/ >/dev/null")
        first_pending(cli, slug)
        (row,) = [r for r in json.loads(cli.run("top", "--once", "--json", check=True).stdout) if r["slug"] == slug]
        assert row["state"] == "waiting" and row["requests"][0]["name"] == "forbidden.test:80"
        assert row["egress"]["allowed"] >= 1 and row["egress"]["denied"] >= 1 and row["egress"]["bytes"] > 0
        # The live view, in a real terminal of 80x24 (what an SSH session on a phone gives).
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in cli.env().items() if k.startswith(("CLAUDE_BOTTLE", "PATH")))
        cmd = f"cd {shlex.quote(str(cli.cwd))} && env {env} {shlex.quote(sys.executable)} -m claude_bottle top"
        tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24", cmd)
        shot = wait_screen(session, slug)
        assert "waiting" in shot and "forbidden.test:80" in shot and "ssrf" in shot, shot
        assert all(len(line) <= 80 for line in shot.splitlines()) and len(shot.splitlines()) <= 24
        tmux("send-keys", "-t", session, "p")  # approve as private (a test host: a private address)
        out, err = asking.communicate(timeout=60)
        assert asking.returncode == 0 and "granted egress:forbidden.test:80" in out, out + err
        wait_screen(session, "granted egress:forbidden.test:80")
        tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 10
        while subprocess.run(["tmux", "has-session", "-t", session], capture_output=True, check=False).returncode == 0:
            assert time.monotonic() < deadline, "q did not end top"
            time.sleep(0.1)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, check=False)
        if asking.poll() is None:
            asking.kill()
        cli.run("stop", slug, "--rm")
