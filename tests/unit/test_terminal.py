"""The operator's terminal (issue 9 findings 7, 12): what a bottle prints cannot drive it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from claude_bottle.backend import _BACKENDS
from claude_bottle.bottle.state import BottleRecord, StateDir
from claude_bottle.cli import logs
from claude_bottle.terminal import LineEscaper, ScreenFilter, escape_controls

from .fakes import FakeBackend

OSC52 = b"\x1b]52;c;aGVsbG8=\x07"  # set the clipboard to "hello"
OSC52_ST = b"\x1b]52;c;aGVsbG8=\x1b\\"
TMUX_PASSTHROUGH = b"\x1bPtmux;\x1b\x1b]52;c;aGVsbG8=\x07\x1b\\"
TITLE_REPORT = b"\x1b[21t"  # makes the terminal type its title back as input
ITERM_FILE = b"\x1b]1337;File=name=eA==;inline=1:aGk=\x07"
C1_CSI = "\u009b31m".encode()


@pytest.mark.parametrize(
    "evil",
    [
        OSC52,
        OSC52_ST,
        TMUX_PASSTHROUGH,
        TITLE_REPORT,
        ITERM_FILE,
        C1_CSI,
        b"\x1b]8;;http://evil/\x07link\x1b]8;;\x07",
        b"\x1b[5i",
        b"\x1b_apc\x1b\\",
    ],
)
def test_dangerous_sequences_never_reach_the_terminal(evil: bytes) -> None:
    out = ScreenFilter().feed(b"before " + evil + b" after")
    assert out.startswith(b"before ") and out.endswith(b" after")
    assert b"52;" not in out and b"tmux;" not in out and b"1337" not in out and b"\x9b" not in out
    assert b"\x1b[21t" not in out and b"\x1b[5i" not in out and b"]8;" not in out and b"apc" not in out


def test_what_a_screen_needs_passes_unchanged() -> None:
    text = b"colour \x1b[1;31mred\x1b[0m, cursor \x1b[10;5H, alt screen \x1b[?1049h, charset \x1b(B"
    text += " \u276f \u2733\r\n".encode()
    assert ScreenFilter().feed(text) == text
    assert ScreenFilter().feed(b"\x1b]11;?\x07") == b"\x1b]11;?\x07"  # a colour query


def test_titles_pass_sanitised_and_sequences_split_across_reads_are_judged_whole() -> None:
    f = ScreenFilter()
    out = f.feed(b"\x1b]0;Claude \x1b") + f.feed(b"\\ok\x1b]5") + f.feed(b"2;c;aGVs") + f.feed(b"bG8=\x07!")
    assert out == b"\x1b]0;Claude \x07ok!"


def test_an_unterminated_string_is_dropped_not_passed() -> None:
    f = ScreenFilter()
    assert f.feed(b"\x1bPq" + b"x" * 10000) == b""
    assert f.feed(b"\x1b\\visible") == b"visible"


def test_escape_controls() -> None:
    assert escape_controls("a\x1b]52;c;x\x07b\tc\n") == "a\\x1b]52;c;x\\x07b\tc\n"
    assert escape_controls("\u009b31m") == "\\x9b31m"
    e = LineEscaper()
    assert e.feed("é".encode()[:1]) + e.feed("é".encode()[1:] + b"\xff") == "é\\xff"


def test_logs_escape_control_characters_unless_raw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    monkeypatch.setitem(_BACKENDS, "fake", "tests.unit.fakes:FakeBackend")
    FakeBackend.reset()
    FakeBackend.logs_output = b"agent | hi " + OSC52 + b"\x1b[2J\n"
    sd = StateDir("claude-abcde")
    sd.create()
    sd.write(BottleRecord(slug=sd.slug, agent="claude", bottle="default", backend="fake", status="running"))
    args = argparse.Namespace(slug=sd.slug, egress=False, follow=False, raw=False)
    assert logs.run(args) == 0
    shown = capsysbinary.readouterr().out
    assert shown == b"agent | hi \\x1b]52;c;aGVsbG8=\\x07\\x1b[2J\n"
    assert logs.run(argparse.Namespace(**{**vars(args), "raw": True})) == 0
    assert capsysbinary.readouterr().out == FakeBackend.logs_output


def test_a_client_that_outlives_its_command_is_ended_when_done_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """gVisor's `docker exec -i` waits on its input after the command ended (issue 23): `done` ends it,
    after a grace for its last output; without `done` the command runs to its own end."""
    import sys
    import time

    from claude_bottle import terminal

    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    asked = []

    def done() -> bool:
        asked.append(1)
        return len(asked) >= 3

    t0 = time.monotonic()
    rc = terminal.run_on_terminal([sys.executable, "-c", "import time; time.sleep(60)"], done=done)
    assert time.monotonic() - t0 < 10 and rc != 0 and len(asked) == 3
    assert terminal.run_on_terminal([sys.executable, "-c", "raise SystemExit(7)"], done=lambda: False) == 7
    assert terminal.run_on_terminal([sys.executable, "-c", "raise SystemExit(5)"]) == 5


def test_a_session_whose_claude_has_ended_is_not_running(tmp_path: Path) -> None:
    """claude's exit written means its session is over, even while tmux is still closing (gVisor), so an
    attached run that ended is finished, not taken for a detach; the engine is not asked."""
    from claude_bottle.bottle.claude_code import HOST_EXIT_FILE
    from claude_bottle.work.session import session_running

    state = StateDir("claude-abcde", tmp_path)
    state.claude_home.mkdir(parents=True)
    (state.claude_home / HOST_EXIT_FILE).write_text("0\n")

    class Asked(FakeBackend):
        def exec_output(self, **_kw: object) -> tuple[int, str]:
            raise AssertionError("the engine was asked")

    assert session_running(Asked(), state) is False
