"""Word when a bottle needs someone, without an engine: the operator's settings, signed webhooks (a receiver
of the test's own on loopback), retries, and the watcher's events from a state dir the test writes."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.bottle.claude_code import HOST_EXIT_FILE
from claude_bottle.bottle.record import BottleRecord
from claude_bottle.bottle.state import StateDir
from claude_bottle.errors import BottleError
from claude_bottle.notify import send, settings, watch


class Receiver:
    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.got: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append((dict(self.headers.items()), body))
                self.send_response(outer.answers.pop(0) if outer.answers else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver([])
    yield r
    r.server.shutdown()
    r.server.server_close()


SECRET = "s3cret-for-the-receiver"


def write_settings(home: Path, url: str, **extra: str) -> None:
    lines = ["[notify]", "desktop = false", "[[notify.webhooks]]", f'url = "{url}"', 'secret = "env:CB_TEST_HOOK"']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    (home / "config.toml").write_text("\n".join(lines) + "\n")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CLAUDE_BOTTLE_HOME", str(tmp_path))
    monkeypatch.setenv("CB_TEST_HOOK", SECRET)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    return tmp_path


def test_no_settings_wants_no_word_and_spawns_nothing(home: Path) -> None:
    assert not settings.load().wants_word
    state = StateDir("claude-abcde", home / "state")
    state.create()
    assert watch.spawn(state) is None and not (state.path / watch.PID_FILE).exists()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[notify\n", "not valid TOML"),
        ('[[notify.webhooks]]\nurl = "ftp://x"\nsecret = "env:A"\n', "notify.webhooks.0.url"),
        ('[[notify.webhooks]]\nurl = "https://x"\nsecret = "plain"\n', "notify.webhooks.0.secret"),
        ('[[notify.webhooks]]\nurl = "https://x"\nsecret = "env:A"\nevents = ["later"]\n', "events"),
        ("[notify]\nsound = true\n", "notify.sound"),
    ],
)
def test_a_bad_settings_file_is_one_line_naming_it(home: Path, text: str, why: str) -> None:
    (home / "config.toml").write_text(text)
    with pytest.raises(BottleError, match=why) as got:
        settings.load()
    assert str(home / "config.toml") in str(got.value) and "\n" not in str(got.value)


def test_an_unset_secret_fails_the_check_before_a_start(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_settings(home, "https://hooks.example/x")
    watch.check()
    monkeypatch.delenv("CB_TEST_HOOK")
    with pytest.raises(BottleError, match="CB_TEST_HOOK is unset"):
        watch.check()


def test_an_event_is_signed_and_the_receiver_can_check_it(home: Path, receiver: Receiver) -> None:
    write_settings(home, receiver.url)
    hook = settings.load().notify.webhooks[0]
    assert send.post(hook, {"id": "e1", "event": "waiting", "bottle": "claude-abcde"})
    headers, body = receiver.got[0]
    assert json.loads(body)["bottle"] == "claude-abcde" and headers["X-Claude-Bottle-Event"] == "waiting"
    assert send.verify(SECRET.encode(), headers, body)
    assert not send.verify(b"another secret", headers, body)
    assert not send.verify(SECRET.encode(), headers, body.replace(b"abcde", b"vwxyz"))  # the body is signed
    assert not send.verify(SECRET.encode(), headers, body, now=time.time() + 3600)  # and it does not replay later


def test_a_failing_receiver_is_retried_with_backoff_and_a_refusal_is_not(home: Path, receiver: Receiver) -> None:
    write_settings(home, receiver.url)
    hook = settings.load().notify.webhooks[0]
    waits: list[float] = []
    receiver.answers[:] = [503, 429, 502]
    assert send.post(hook, {"id": "e2", "event": "crashed"}, sleep=waits.append)
    assert len(receiver.got) == 4 and waits == [1.0, 2.0, 4.0]
    receiver.got.clear()
    receiver.answers[:] = [400]
    assert not send.post(hook, {"id": "e3", "event": "crashed"}, sleep=waits.append)
    assert len(receiver.got) == 1
    receiver.server.shutdown()
    receiver.server.server_close()
    waits.clear()
    assert not send.post(hook, {"id": "e4", "event": "crashed"}, sleep=waits.append)  # nobody answers at all
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_events_go_only_where_they_are_wanted(home: Path, receiver: Receiver) -> None:
    write_settings(home, receiver.url, events='["crashed"]')
    s = settings.load()
    assert send.deliver(s, {"id": "w", "event": "waiting", "bottle": "b"}) == []
    for t in send.deliver(s, {"id": "c", "event": "crashed", "bottle": "b"}):
        t.join(5)
    assert [json.loads(b)["id"] for _, b in receiver.got] == ["c"]


def bottle_state(home: Path) -> StateDir:
    state = StateDir("claude-abcde", home / "state")
    state.create()
    state.write(BottleRecord(slug=state.slug, agent="claude", bottle="default", backend="docker", status="running"))
    state.claude_home.mkdir()
    return state


def request_line(rid: str, name: str = "jq") -> str:
    return json.dumps({"id": rid, "kind": "apt", "name": name, "reason": "parse json", "time": "2026-12-03T00:00:00"})


def test_the_watcher_says_each_new_request_once_with_the_command_that_answers_it(home: Path) -> None:
    state = bottle_state(home)
    w = watch.Watch(state)
    assert w.poll() == []
    (state.path / "requests.jsonl").write_text(request_line("r-1a2b3c4d") + "\n")
    (e,) = w.poll()
    assert e["event"] == "waiting" and e["bottle"] == state.slug and e["request"]["id"] == "r-1a2b3c4d"
    assert e["answer"]["grant"] == f"claude-bottle grant {state.slug} --request r-1a2b3c4d"
    assert "apt:jq (parse json)" in e["summary"]
    assert w.poll() == []  # said once
    with (state.path / "requests.jsonl").open("a") as f:
        f.write(request_line("r-5e6f7a8b", "curl") + "\n")
    assert [x["request"]["id"] for x in w.poll()] == ["r-5e6f7a8b"]


@pytest.mark.parametrize(
    ("code", "kind"), [("0", "finished"), ("130", "finished"), ("1", "crashed"), ("137", "crashed")]
)
def test_the_watcher_says_how_a_run_ended(home: Path, code: str, kind: str) -> None:
    state = bottle_state(home)
    w = watch.Watch(state)
    (state.claude_home / HOST_EXIT_FILE).write_text(code + "\n")
    (e,) = w.poll()
    assert e["event"] == kind and e["exit_code"] == int(code)
    assert w.poll() == []


def test_an_agent_that_is_gone_is_a_crash_said_once_after_two_looks(home: Path) -> None:
    state = bottle_state(home)
    seen = iter(["running", "exited", "exited", "exited", None])
    w = watch.Watch(state, live=lambda: next(seen))
    got = [w.poll(now=float(t) * 3) for t in range(1, 6)]
    crashes = [e for batch in got for e in batch]
    assert len(crashes) == 1 and crashes[0]["event"] == "crashed" and "exited" in crashes[0]["summary"]
    assert got[2] == crashes  # the second look that saw it, not the first


def test_a_bottle_being_stopped_is_no_crash(home: Path) -> None:
    state = bottle_state(home)
    w = watch.Watch(state, live=lambda: None)
    with state.lock():  # a stop holds the lock between removing the containers and recording it
        assert [w.poll(now=float(t) * 3) for t in range(1, 5)] == [[], [], [], []]


def test_the_watcher_ends_with_the_bottle_and_delivers_what_it_saw(home: Path, receiver: Receiver) -> None:
    write_settings(home, receiver.url)
    state = bottle_state(home)
    (state.path / "requests.jsonl").write_text(request_line("r-0a0b0c0d") + "\n")
    done = threading.Event()

    def run() -> None:
        watch.run(state.path, poll=0.05)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    deadline = time.monotonic() + 5
    while not receiver.got:
        assert time.monotonic() < deadline, "no event reached the receiver"
        time.sleep(0.02)
    state.update(status="stopped")
    assert done.wait(5), "the watcher outlived its bottle"
    assert json.loads(receiver.got[0][1])["request"]["id"] == "r-0a0b0c0d"


def test_a_foreground_runs_end_is_read_from_the_state_dir_and_an_earlier_one_is_not_said(home: Path) -> None:
    from claude_bottle.bottle.claude_code import RUN_END_FILE

    state = bottle_state(home)
    w = watch.Watch(state)
    (state.path / RUN_END_FILE).write_text("2\n")
    (e,) = w.poll()
    assert e["event"] == "crashed" and e["exit_code"] == 2
    (state.path / RUN_END_FILE).write_text("not a code\n")
    assert w.poll() == []  # an unreadable end says nothing
