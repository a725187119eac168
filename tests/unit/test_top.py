"""`top` without an engine: its data (work/overview.py) from state dirs the test writes, and its screen driven
by Textual's own harness (keys pressed, the screen read, the verbs it runs recorded)."""

from __future__ import annotations

import asyncio
import html
import json
import re
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.bottle.capabilities import Request
from claude_bottle.bottle.record import BottleRecord
from claude_bottle.bottle.state import StateDir
from claude_bottle.cli import main
from claude_bottle.cli.top_app import PRIVATE_NOTE, TopApp
from claude_bottle.cli.top_table import text_lines
from claude_bottle.work import overview
from claude_bottle.work.overview import BottleView, Egress, Tallies


def view(slug: str, state: str = "running", requests: list[Request] | None = None, **kw: Any) -> BottleView:
    base: dict[str, Any] = {
        "slug": slug, "agent": "claude", "backend": "docker", "isolation": "container", "state": state,
        "status": state, "since": 75.0, "doing": "Bash: npm test", "egress": Egress(3, 1, 2048, "registry.npmjs.org"),
        "requests": requests or [], "ports": [],
    }  # fmt: skip
    base.update(kw)
    return BottleView(**base)


REQ = Request("claude-bbbbb", "r-1a2b3c4d", "egress", "docs.example.com:443", "the API docs", "2026-12-03T10:00:00")


def screen_text(svg: str) -> str:
    """The screen as text, line by line, from Textual's own screenshot (an SVG of the terminal)."""
    lines: dict[int, str] = {}
    for n, text in re.findall(r'clip-path="url\(#terminal-[0-9]+-line-([0-9]+)\)">([^<]*)</text>', svg):
        lines[int(n)] = lines.get(int(n), "") + html.unescape(text).replace("\xa0", " ")
    return "\n".join(lines[k] for k in sorted(lines))


class Source:
    def __init__(self, views: list[BottleView]) -> None:
        self.views = views
        self.calls = 0

    def __call__(self, _tallies: Tallies) -> list[BottleView]:
        self.calls += 1
        return list(self.views)


def drive(
    views: list[BottleView], keys: list[str], *, size: tuple[int, int] = (80, 24)
) -> tuple[Any, list[tuple[str, ...]], str]:
    acted: list[tuple[str, ...]] = []

    def act(*verb: str, whole: bool = False) -> tuple[int, str]:
        acted.append(verb)
        return 0, '{"kind":"http","host":"x"}' if whole else "ok"

    source = Source(views)
    app = TopApp(source, interval=0.2, act=act)

    async def go() -> str:
        async with app.run_test(size=size) as pilot:
            await pilot.pause(0.3)
            for k in keys:
                await pilot.press(k)
                await pilot.pause(0.3)
            return screen_text(app.export_screenshot())

    shot = asyncio.run(go())
    return app, acted, shot


def test_the_screen_shows_every_bottle_and_what_the_selected_one_waits_for() -> None:
    views = [view("claude-aaaaa"), view("claude-bbbbb", "waiting", [REQ])]
    _app, acted, shot = drive(views, ["down"])
    assert "claude-aaaaa" in shot and "claude-bbbbb" in shot and "waiting" in shot
    assert "docs.example.com:443" in shot and "the API docs" in shot
    assert "403" in shot and "ssrf" in shot  # what an approval will not do, before it is made
    assert acted == []


@pytest.mark.parametrize(
    ("key", "verb"),
    [
        ("a", ("grant", "claude-bbbbb", "--request", "r-1a2b3c4d", "--detach")),
        ("p", ("grant", "claude-bbbbb", "--request", "r-1a2b3c4d", "--private", "--detach")),
        ("d", ("deny", "claude-bbbbb", "--request", "r-1a2b3c4d")),
        ("s", ("stop", "claude-bbbbb")),
    ],
)
def test_keys_act_on_the_selected_bottle_through_the_verbs(key: str, verb: tuple[str, ...]) -> None:
    _app, acted, _ = drive([view("claude-aaaaa"), view("claude-bbbbb", "waiting", [REQ])], ["down", key])
    assert acted == [verb]


def test_approve_with_nothing_waiting_does_nothing() -> None:
    _app, acted, _ = drive([view("claude-aaaaa")], ["a", "d"])
    assert acted == []


def test_the_log_opens_and_attach_leaves_top_for_attach() -> None:
    _app, acted, shot = drive([view("claude-aaaaa")], ["l"])
    assert acted == [("logs", "claude-aaaaa", "--egress")] and "egress log" in shot
    app, _, _ = drive([view("claude-aaaaa")], ["t"])
    assert app.return_value == ("attach", "claude-aaaaa")


def test_a_bottle_that_starts_waiting_rings_the_bell(monkeypatch: pytest.MonkeyPatch) -> None:
    rings: list[int] = []
    monkeypatch.setattr(TopApp, "ring", lambda self, slugs: rings.append(len(slugs)))
    views = [view("claude-aaaaa")]
    source = Source(views)
    app = TopApp(source, interval=0.2, act=lambda *v, **k: (0, ""))

    async def go() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.5)
            assert rings == []
            source.views = [view("claude-aaaaa", "waiting", [REQ])]
            await pilot.pause(0.6)

    asyncio.run(go())
    assert rings == [1] and source.calls >= 3  # refreshed on its own, within its interval


def test_agent_text_cannot_drive_the_screen() -> None:
    hostile = view("claude-aaaaa", doing="[b]bold[/b] \x1b]52;c;cHduZWQ=\x07 [link=http://x]y[/link]")
    _app, _, shot = drive([hostile], [])
    assert "\x1b]52" not in shot and "[b]bold[/b]" in shot  # shown as text, never markup or escapes


def test_the_private_note_names_the_key() -> None:
    assert "[b]p[/b]" in PRIVATE_NOTE


# -- the data ---------------------------------------------------------------------------------------
def bottle(home: Path, slug: str, status: str = "running") -> StateDir:
    state = StateDir(slug, home / "state")
    state.create()
    state.write(BottleRecord(slug=slug, agent="claude", bottle="default", backend="fake", status=status))
    return state


def test_egress_is_counted_once_as_the_log_grows(tmp_path: Path) -> None:
    log = tmp_path / "egress.jsonl"
    lines = [
        {"kind": "http", "decision": "allow", "host": "a.test", "conn": 1},
        {"kind": "end", "conn": 1, "bytes_up": 10, "bytes_down": 90},
        {"kind": "connect", "decision": "deny", "host": "b.test", "conn": 2},
        {"kind": "dns", "decision": "deny", "name": "c.test"},
        {"kind": "inbound", "decision": "allow", "port": 3000},
    ]
    log.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"kind": "http", "decision": "al')
    t = Tallies()
    e = t.read(log)
    assert (e.allowed, e.denied, e.bytes, e.last_host, e.inbound) == (1, 1, 100, "b.test", 1)
    with log.open("a") as f:
        f.write('low", "host": "d.test\\u001b[2J"}\n')
    e = t.read(log)
    assert (e.allowed, e.last_host) == (2, "d.test\\x1b[2J")  # the half line, once whole; escaped
    assert t.read(log).allowed == 2  # read once
    log.unlink()
    log.write_text(json.dumps(lines[0]) + "\n")  # a new log
    assert t.read(log).allowed == 1


def test_what_the_agent_is_doing_comes_from_its_transcript(tmp_path: Path) -> None:
    state = bottle(tmp_path, "claude-aaaaa")
    proj = state.claude_home / "projects" / "-workspace"
    proj.mkdir(parents=True)
    tool = {"type": "assistant", "message": {"content": [{"type": "tool_use", "name": "Bash",
                                                          "input": {"command": "npm\n test"}}]}}  # fmt: skip
    (proj / "s1.jsonl").write_text(json.dumps({"type": "user", "message": {"content": "go"}}) + "\n" + json.dumps(tool))
    assert overview.doing(state, "s1") == "Bash: npm test"
    said = {"message": {"content": [{"type": "text", "text": "All tests pass.\x1b[31m"}]}}
    (proj / "s1.jsonl").write_text(json.dumps(said) + "\n")
    assert overview.doing(state, "s1") == "All tests pass.\\x1b[31m"
    (proj / "s1.jsonl").unlink()
    (proj / "s1.jsonl").symlink_to("/etc/passwd")
    assert overview.doing(state, "s1") == ""  # never through a link


def test_top_once_json_from_state_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLAUDE_BOTTLE_HOME", str(tmp_path))
    state = bottle(tmp_path, "claude-aaaaa", status="stopped")
    (state.path / "requests.jsonl").write_text(
        json.dumps({"id": "r-00000001", "kind": "apt", "name": "jq", "reason": "json", "time": "2026-12-03T00:00:00"})
        + "\n"
    )
    monkeypatch.setattr(overview, "list_bottles", lambda root=None: [_row("claude-aaaaa", "blocked (wants apt:jq)")])
    assert main(["top", "--once", "--json"]) == 0
    (got,) = json.loads(capsys.readouterr().out)
    assert got["slug"] == "claude-aaaaa" and got["state"] == "waiting" and got["requests"][0]["name"] == "jq"
    assert main(["top", "--once"]) == 0
    text = capsys.readouterr().out
    assert "claude-aaaaa" in text and "waiting" in text
    assert all(len(ln) <= 200 for ln in text_lines([view("x" * 300)]))


def _row(slug: str, status: str) -> Any:
    from claude_bottle.work.inventory import BottleRow

    return BottleRow(slug, "claude", "fake", status, "2026-12-03T00:00:00", None, None)


def test_top_without_a_terminal_points_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top"]) == 1
    assert "top --once --json" in capsys.readouterr().err
