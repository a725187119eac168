"""The watcher: one process per running bottle that tells the operator's receivers when it needs someone.

`start` and `resume` spawn it (`spawn`) when the operator's settings want word of anything. It runs in a
session of its own (no terminal: a closed one, or a logout that leaves user processes running, does not
end it), as the operator, reading only the bottle's state dir on the host. It polls, every quarter
second, what the guard and the bottle leave there:
- a new pending request (`requests.jsonl` less the answers): `waiting`;
- claude's exit file: `finished`, or `crashed` when the code is not a normal end;
- every second, the engine's word on the bottle: `crashed` when the record says running and the agent is
  not, twice in a row, with no stop holding the bottle's lock.

It ends when the bottle is no longer running (stopped, blocked on a package, removed). Nothing here
touches the bottle: a receiver that never answers costs its own thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from claude_bottle.bottle.capabilities import Request, pending
from claude_bottle.bottle.claude_code import HOST_EXIT_FILE, NORMAL_ENDS, RUN_END_FILE, parse_exit_code, run_end
from claude_bottle.bottle.state import StateDir, pid_alive, write_private
from claude_bottle.errors import BottleError
from claude_bottle.notify import send
from claude_bottle.notify.settings import Settings, load

log = logging.getLogger(__name__)

PID_FILE = "notify.pid"
LOG_FILE = "notify.log"
POLL = 0.25
LIVE_EVERY = 1.0
LIVE_STATES = ("running", "creating")


def event(state: StateDir, kind: str, *, summary: str, key: str, **extra: Any) -> dict[str, Any]:
    record = state.read()
    return {
        "id": f"{state.slug}-{record.generation}-{kind}-{key}",
        "event": kind,
        "bottle": state.slug,
        "agent": record.agent,
        "backend": record.backend,
        "host": socket.gethostname(),
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "summary": summary,
        **extra,
    }


def waiting(state: StateDir, r: Request) -> dict[str, Any]:
    grant = f"claude-bottle grant {state.slug} --request {r.id}"
    return event(
        state, "waiting", key=r.id, summary=f"{r.label} ({r.reason})" if r.reason else r.label,
        request=r.as_json(), answer={"grant": grant, "deny": f"claude-bottle deny {state.slug} --request {r.id}"},
    )  # fmt: skip


@dataclass
class Watch:
    """What has been said of one bottle; `poll` returns what is new."""

    state: StateDir
    live: Any = None  # () -> the engine's status of the bottle ("running", "exited", None: gone)
    said: set[str] = field(default_factory=set)
    ends_seen: set[int] = field(default_factory=set)  # the run-end files' mtime_ns already announced
    not_running: int = 0
    last_live: float = 0.0

    def poll(self, now: float | None = None) -> list[dict[str, Any]]:
        out = []
        for r in pending(self.state):
            if r.id not in self.said:
                self.said.add(r.id)
                out.append(waiting(self.state, r))
        out += self._run_end()
        out += self._engine(time.monotonic() if now is None else now)
        return out

    def _run_end(self) -> list[dict[str, Any]]:
        """A run's end: a foreground run's as its CLI saw it (the state dir), else a detached one's (the
        exit file bottle-run leaves in claude-home: the agent could write it, so it says no more than
        that a run ended how)."""
        for path, read in (
            (self.state.path / RUN_END_FILE, _host_code),
            (self.state.claude_home / HOST_EXIT_FILE, None),
        ):
            try:
                mtime = path.lstat().st_mtime_ns
            except OSError:
                continue
            code = read(path) if read else run_end(self.state)
            if code is None or mtime in self.ends_seen:
                continue
            self.ends_seen.add(mtime)
            kind = "finished" if code in NORMAL_ENDS else "crashed"
            said = f"claude ended (exit {code})" if kind == "finished" else f"claude crashed (exit {code})"
            return [event(self.state, kind, key=f"exit-{mtime}", summary=said, exit_code=code)]
        return []

    def _engine(self, now: float) -> list[dict[str, Any]]:
        if self.live is None or now - self.last_live < LIVE_EVERY:
            return []
        self.last_live = now
        status = self.live()
        if status == "running" or self.state.busy() or self.state.read().status not in LIVE_STATES:
            self.not_running = 0
            return []
        self.not_running += 1
        if self.not_running != 2:  # said once, after two looks: a stop's moment between its steps is not a crash
            return []
        key = f"engine-{int(time.time())}"
        return [event(self.state, "crashed", key=key, summary=f"the agent is {status or 'gone'}", status=status)]


def _host_code(path: Path) -> int | None:
    try:
        return parse_exit_code(path.read_text(encoding="ascii", errors="replace")[:16])
    except OSError:
        return None


def run(state_path: Path, *, settings: Settings | None = None, poll: float = POLL) -> int:
    state = StateDir(state_path.name, root=state_path.parent)
    settings = settings or load()

    def live() -> str | None:
        from claude_bottle.backend import get_bottle_backend

        try:
            found = get_bottle_backend(state.read().backend).statuses().get(state.slug)
        except BottleError:
            return "running"  # the engine did not answer: no word of a crash on that alone
        return found.status if found else None

    watch = Watch(state, live)
    for old in (state.path / RUN_END_FILE, state.claude_home / HOST_EXIT_FILE):  # an earlier run's end
        with contextlib.suppress(OSError):
            watch.ends_seen.add(old.lstat().st_mtime_ns)
    threads = []
    while True:
        try:
            for e in watch.poll():
                log.info("event %s", e["id"])
                threads += send.deliver(settings, e)
            if not state.exists() or state.read().status not in LIVE_STATES:
                break
        except (OSError, BottleError) as exc:
            if not state.path.is_dir():
                break
            log.warning("watching %s: %s", state.slug, exc)
        time.sleep(poll)
    for t in threads:  # what is on its way still goes (each bounded by its retries)
        t.join(timeout=60)
    return 0


def spawn(state: StateDir) -> int | None:
    """Start the bottle's watcher when the operator's settings want word of anything, unless one runs;
    its pid, or None. A bad settings file was refused before the start (check)."""
    settings = load()
    if not settings.wants_word:
        return None
    pid_file = state.path / PID_FILE
    with contextlib.suppress(OSError, ValueError):
        old = int(pid_file.read_text().split()[0])
        if pid_alive(old, None) and b"claude_bottle.notify.watch" in Path(f"/proc/{old}/cmdline").read_bytes():
            return old
    fd = os.open(state.path / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "claude_bottle.notify.watch", str(state.path)],
            stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True, close_fds=True,
        )  # fmt: skip
    finally:
        os.close(fd)
    write_private(pid_file, f"{proc.pid}\n")
    return proc.pid


def check() -> None:
    """Before a start does any slow work: the settings read, and every webhook's secret readable now."""
    for hook in load().notify.webhooks:
        hook.read_secret()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m claude_bottle.notify.watch STATE_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return run(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
