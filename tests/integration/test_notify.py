"""Word when a bottle needs someone (issue 24), on the real engine: a webhook receiver of the test's own (on
loopback) gets a signed event within 2 s of a real bottle waiting on a request, with the command that
answers it; that command resumes the agent; a headless run's end is said too; the watcher ends with its
bottle."""

from __future__ import annotations

import http.server
import json
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.notify import send

from .conftest import Cli, Internet, user_project

SECRET = "the-receivers-shared-secret"


class Receiver:
    def __init__(self) -> None:
        self.got: list[tuple[float, dict[str, str], bytes]] = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append((time.monotonic(), dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/claude-bottle"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, kind: str, timeout: float) -> list[tuple[float, dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        while True:
            found = [(t, json.loads(b)) for t, h, b in self.got if json.loads(b)["event"] == kind]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.02)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def heard(tmp_path_factory: pytest.TempPathFactory, internet: Internet, receiver: Receiver) -> Iterator[Cli]:
    """A project whose operator's settings send every event to the receiver."""
    with user_project(tmp_path_factory, internet, "notify") as c:
        c.extra_env["CB_TEST_HOOK_SECRET"] = SECRET
        (c.home / "config.toml").write_text(
            f'[notify]\ndesktop = false\n\n[[notify.webhooks]]\nurl = "{receiver.url}"\n'
            'secret = "env:CB_TEST_HOOK_SECRET"\n'
        )
        yield c


def watcher(c: Cli, slug: str) -> int:
    return int((c.states / slug / "notify.pid").read_text())


def gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_waiting_bottle_is_heard_within_2s_signed_and_its_answer_resumes_it(heard: Cli, receiver: Receiver) -> None:
    slug = heard.start()
    try:
        pid = watcher(heard, slug)
        assert os.getsid(pid) == pid  # a session of its own: a closed terminal does not end it
        requests = heard.states / slug / "requests.jsonl"
        asking = subprocess.Popen(
            heard.argv("exec", slug, "--", "bottle-capability", "request", "egress:forbidden.test:80",
                       "--reason", "the docs live there", "--wait", "60"),
            cwd=heard.cwd, env=heard.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        while not (requests.exists() and requests.read_text().strip()):
            assert asking.poll() is None, asking.communicate()
            time.sleep(0.02)
        asked = time.monotonic()
        ((heard_at, event),) = receiver.events("waiting", timeout=10)
        assert heard_at - asked < 2.0, f"heard {heard_at - asked:.2f}s after the request"
        _, headers, body = next(g for g in receiver.got if json.loads(g[2])["event"] == "waiting")
        assert send.verify(SECRET.encode(), headers, body)
        assert event["bottle"] == slug and event["request"]["name"] == "forbidden.test:80"
        assert event["request"]["reason"] == "the docs live there"
        # The command the event names answers it (a test host: its address is private, so said so).
        grant = shlex.split(event["answer"]["grant"])
        assert grant[:2] == ["claude-bottle", "grant"]
        heard.run(*grant[1:], "--private", check=True)
        out, err = asking.communicate(timeout=60)
        assert asking.returncode == 0 and "granted egress:forbidden.test:80" in out, out + err
    finally:
        heard.run("stop", slug, "--rm")
    assert gone(pid, timeout=10), "the watcher outlived its bottle"


def test_a_headless_runs_end_is_heard(heard: Cli, receiver: Receiver) -> None:
    r = heard.run("start", "claude", "--prompt", "say hello", timeout=600)
    assert r.returncode == 0, r.stderr
    ((_, event),) = receiver.events("finished", timeout=10)
    assert event["exit_code"] == 0 and event["agent"] == "claude"
    slug = event["bottle"]
    try:
        assert gone(watcher(heard, slug), timeout=10)
    finally:
        heard.run("stop", slug, "--rm")


def test_an_agent_killed_under_a_detached_bottle_is_heard_as_a_crash(heard: Cli, receiver: Receiver) -> None:
    from .conftest import NS, docker

    slug = heard.start()
    try:
        docker("kill", f"{NS}-{slug}-agent")
        killed = time.monotonic()
        ((heard_at, event),) = receiver.events("crashed", timeout=15)
        assert event["bottle"] == slug and event["status"] in ("exited", None)
        assert heard_at - killed < 3.5, f"heard {heard_at - killed:.2f}s after the kill"  # two looks, a second apart
    finally:
        heard.run("stop", slug, "--rm")
