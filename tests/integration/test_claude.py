"""The real Claude Code CLI in a bottle, against the fake Messages API, through the guard's route."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from typing import Any

import pyte
import pytest

from .conftest import NS, STATE, TEST_KEY, Cli, Internet, docker, user_project

AGENT_UID = 1000
BOTTLE_UID = 60999


@pytest.fixture(scope="module")
def ccli(tmp_path_factory: pytest.TempPathFactory, internet: Internet) -> Iterator[Cli]:
    """A project owned by a regular user, as when root runs claude-bottle on someone's checkout."""
    with user_project(tmp_path_factory, internet, "claude") as c:
        yield c


def messages_requests(internet: Internet) -> list[dict[str, Any]]:
    return [r for r in internet.requests("anthropic") if r["path"].startswith("/v1/messages")]


def header(request: dict[str, Any], name: str) -> str | None:
    return next((v for k, v in request["headers"].items() if k.lower() == name), None)


def test_headless_run_edits_the_workspace_and_resume_continues(ccli: Cli, internet: Internet) -> None:
    before = len(messages_requests(internet))
    r = ccli.run(
        "start",
        "claude",
        "--prompt",
        "FIRST-SESSION-MARKER please TOOL: echo made-by-claude > /workspace/out.txt",
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAKE-UPSTREAM: the command ran." in r.stdout
    slug = r.stdout.strip().splitlines()[0]
    # The agent wrote its copy (the bottle user's); `apply` brings it into the workspace, as its owner's.
    made = ccli.home / STATE / slug / "copy" / "out.txt"
    assert made.read_text().strip() == "made-by-claude" and made.stat().st_uid == BOTTLE_UID
    applied = ccli.run("apply", slug)
    assert applied.returncode == 0 and "1 added" in applied.stderr, applied.stderr
    out = ccli.cwd / "out.txt"
    assert out.read_text().strip() == "made-by-claude"
    if os.getuid() == 0:
        assert out.stat().st_uid == AGENT_UID  # the workspace owner's, not root's
    new = messages_requests(internet)[before:]
    assert new and all(header(q, "x-api-key") == TEST_KEY for q in new)
    tool_turn = [q for q in new if "tool_result" in json.dumps(q["body"])]
    assert tool_turn, "Claude Code never sent the tool result back"

    row = ccli.ls()[slug]
    assert row["status"] == "stopped" and row["resumable"] is True
    record = json.loads((ccli.home / STATE / slug / "bottle.json").read_text())
    session = record["session_id"]
    assert list((ccli.home / STATE / slug / "claude-home" / "projects").glob(f"*/{session}.jsonl"))

    before = len(messages_requests(internet))
    r = ccli.run("resume", slug, "--prompt", "second turn", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "REMEMBERED" in r.stdout
    sent = json.dumps(messages_requests(internet)[before:])
    assert "FIRST-SESSION-MARKER" in sent and "second turn" in sent
    assert json.loads((ccli.home / STATE / slug / "bottle.json").read_text())["generation"] == 2


def test_a_killed_bottle_is_preserved_and_resumes(ccli: Cli) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "claude_bottle",
            "start",
            "claude",
            "--prompt",
            "TOOL: python3 -c 'import time; time.sleep(120)'",
        ],
        cwd=ccli.cwd,
        env=ccli.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    slug = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ps = docker("ps", "--filter", "label=com.docker.compose.service=agent", "--format", "{{.Names}}").stdout
        for name in ps.split():
            top = docker("top", name, check=False).stdout.splitlines()[1:]
            # The tool's own process (claude's command line mentions it too, before it runs it).
            running = any(len(ln.split(None, 7)) == 8 and ln.split(None, 7)[7].startswith("python3 -c") for ln in top)
            if running and (ccli.home / STATE / name.removeprefix(f"{NS}-").removesuffix("-agent")).exists():
                slug = name.removeprefix(f"{NS}-").removesuffix("-agent")
        if slug:
            break
        time.sleep(0.3)
    assert slug, "claude never ran the tool"
    docker("kill", f"{NS}-{slug}-agent")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "preserved (crash)" in err
    state = ccli.home / STATE / slug
    assert (state / ".preserve").read_text().strip() == "crash"
    assert list((state / "transcript").rglob("*.jsonl")), "no transcript snapshot"
    assert ccli.ls()[slug]["status"] == "crashed"
    # cleanup keeps it; resume continues it
    dry = ccli.run("cleanup", "--dry-run", check=True).stdout
    assert f"kept state dir: {slug}" in dry
    r = ccli.run("resume", slug, "--prompt", "after the crash", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (state / ".preserve").exists()


def _read_until(fd: int, deadline: float, buf: bytearray) -> None:
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            buf.extend(chunk)
        else:
            return


COLS, ROWS = 120, 40


@pytest.mark.parametrize("leave", ["/exit", "ctrl-c twice"])
def test_interactive_run_through_a_terminal_looks_as_outside_and_ends_normally(ccli: Cli, leave: str) -> None:
    """The operator's view, read from a VT100 screen fed with what reaches their terminal: Claude Code's
    glyphs as UTF-8 (not underscores), its rules as text (not the line-drawing fallback), no tmux hint;
    and leaving claude as it documents (/exit, Ctrl-C twice) is a normal end, not a crash."""
    env = ccli.env(TERM="xterm-256color", COLORTERM="truecolor", LANG="C.UTF-8")
    pid, fd = pty.fork()
    if pid == 0:  # child: the CLI on a pseudo-terminal, as a person would run it
        os.chdir(ccli.cwd)
        os.execvpe(sys.executable, [sys.executable, "-m", "claude_bottle", "start", "claude"], env)  # noqa: S606
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    screen = pyte.Screen(COLS, ROWS)
    stream = pyte.ByteStream(screen)
    buf = bytearray()
    slug = None

    def pump(seconds: float) -> None:
        before = len(buf)
        _read_until(fd, time.monotonic() + seconds, buf)
        stream.feed(bytes(buf[before:]))

    def shown() -> str:
        return "\n".join(screen.display)

    def wait_for(text: str, timeout: float = 120) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pump(0.5)
            if text in shown():
                return shown()
        raise AssertionError(f"{text!r} never appeared on the operator's screen:\n{shown()}")

    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and slug is None:
            pump(1)
            for line in buf.decode(errors="replace").splitlines():
                if line.strip().startswith("claude-") and len(line.strip()) == len("claude-xxxxx"):
                    slug = line.strip()
        assert slug, buf.decode(errors="replace")[-2000:]
        view = wait_for("\u276f")  # claude's prompt marker (a heavy ">"): on the operator's own screen
        os.write(fd, b"hello interactive")
        view = wait_for("hello interactive")
        os.write(fd, b"\r")
        view = wait_for("FAKE-UPSTREAM reply to: hello interactive")
        raw = bytes(buf)
        assert "\u276f".encode() in raw  # sent as UTF-8, not replaced by tmux with "_"
        assert b"\x1b(0" not in raw, "rules drawn in the line-drawing fallback: tmux thinks the terminal is not UTF-8"
        assert "focus-events" not in view and b"focus-events" not in raw
        assert any(ch in view for ch in "\u256d\u2500\u2502\u23bf\u25cf"), view  # box rules and markers as text
        if leave == "/exit":
            os.write(fd, b"/exit")
            wait_for("/exit")
            os.write(fd, b"\r")
        else:
            os.write(fd, b"\x03")
            time.sleep(0.5)
            pump(0.5)
            os.write(fd, b"\x03")
        end = time.monotonic() + 60
        status = None
        while time.monotonic() < end:
            pump(0.5)
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
        assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, buf[-2000:]
        row = ccli.ls()[slug]
        assert (row["status"], row["preserved"]) == ("stopped", None), row  # a normal end, not a crash
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
