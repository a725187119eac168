"""What `top` (and `top --once --json`) shows of every bottle: its state and for how long, what its agent is
doing now, its egress so far, its pending requests and published ports.

One `ls` (one inventory call per backend) and, per bottle, reads of its state dir: the egress log from
where the last look left off (`Tallies` keeps the offsets, so a live view reads each line once), and the
tail of its newest transcript. Everything read from claude-home is the agent's writing: read without
following links, bounded, its control characters escaped (the terminal shows it, never runs it).
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from claude_bottle.bottle.capabilities import Request, pending
from claude_bottle.bottle.state import StateDir
from claude_bottle.terminal import escape_controls
from claude_bottle.work.inventory import BottleRow, list_bottles

TAIL = 64 * 1024  # of a transcript: enough for its last event
DOING_MAX = 120  # characters of what the agent is doing, on one line


@dataclass
class Egress:
    allowed: int = 0
    denied: int = 0
    bytes: int = 0
    last_host: str = ""
    inbound: int = 0

    def as_json(self) -> dict[str, object]:
        return {"allowed": self.allowed, "denied": self.denied, "bytes": self.bytes, "last_host": self.last_host,
                "inbound": self.inbound}  # fmt: skip


@dataclass
class _Tally:
    inode: int = -1
    offset: int = 0
    egress: Egress = field(default_factory=Egress)


class Tallies:
    """Egress counts per bottle, read on from where the last look ended (a new log: from its start)."""

    def __init__(self) -> None:
        self._by_path: dict[Path, _Tally] = {}

    def read(self, path: Path) -> Egress:
        t = self._by_path.setdefault(path, _Tally())
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return t.egress
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return t.egress
            if st.st_ino != t.inode or st.st_size < t.offset:  # another log (or a cut one): count again
                t.inode, t.offset, t.egress = st.st_ino, 0, Egress()
            f.seek(t.offset)
            data = f.read()
        whole, _, _rest = data.rpartition(b"\n")  # a line being written is read next time
        t.offset += len(whole) + (1 if whole or data.startswith(b"\n") else 0)
        for raw in whole.splitlines():
            _count(t.egress, raw)
        return t.egress


def _count(e: Egress, raw: bytes) -> None:
    try:
        line = json.loads(raw)
    except ValueError:
        return
    if not isinstance(line, dict):
        return
    kind, decision = line.get("kind"), line.get("decision")
    if kind == "end":
        e.bytes += _int(line.get("bytes_up")) + _int(line.get("bytes_down"))
    elif kind == "inbound":
        e.inbound += decision == "allow"
    elif kind not in ("dns", "capability", "summary", "operator") and decision in ("allow", "deny") and "host" in line:
        if decision == "allow":
            e.allowed += 1
        elif decision == "deny":
            e.denied += 1
        host = line.get("host")
        if isinstance(host, str):
            e.last_host = escape_controls(host)[:200]


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


@dataclass
class BottleView:
    slug: str
    agent: str
    backend: str
    isolation: str
    state: str  # running | waiting | finished | crashed | preserved | stopped | ... (the row's status otherwise)
    status: str  # as `ls` says it
    since: float | None  # seconds in this state
    doing: str
    egress: Egress
    requests: list[Request]
    ports: list[str]

    def as_json(self) -> dict[str, object]:
        return {
            "slug": self.slug, "agent": self.agent, "backend": self.backend, "isolation": self.isolation,
            "state": self.state, "status": self.status, "since_s": None if self.since is None else round(self.since),
            "doing": self.doing, "egress": self.egress.as_json(), "requests": [r.as_json() for r in self.requests],
            "ports": self.ports,
        }  # fmt: skip


def state_of(row: BottleRow, requests: list[Request]) -> str:
    s = row.status
    if requests and (s == "running" or s.startswith("blocked")):
        return "waiting"
    if s == "running (claude finished)":
        return "finished"
    if s.startswith("running"):
        return "running"
    if s == "crashed" or row.preserved in ("crash",):
        return "crashed"
    if row.preserved:
        return "preserved"
    return s.split(" ", 1)[0]


def _since(state: StateDir) -> float | None:
    try:
        updated = state.read().updated
        return max(0.0, time.time() - datetime.fromisoformat(updated).timestamp())
    except (OSError, ValueError, AttributeError):
        return None


def doing(state: StateDir, session_id: str | None) -> str:
    """The agent's last transcript event, on one line: a tool it used, or what it said."""
    path = _newest_transcript(state.claude_home / "projects", session_id)
    if path is None:
        return ""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return ""
        f.seek(max(0, st.st_size - TAIL))
        lines = f.read(TAIL).splitlines()
    for raw in reversed(lines):
        text = _event_text(raw)
        if text:
            return escape_controls(" ".join(text.split()))[:DOING_MAX]
    return ""


def _event_text(raw: bytes) -> str:
    try:
        event = json.loads(raw)
    except ValueError:
        return ""
    message = event.get("message") if isinstance(event, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    for part in reversed(content if isinstance(content, list) else []):
        if not isinstance(part, dict):
            continue
        if part.get("type") == "tool_use":
            args = part.get("input")
            hint = ""
            if isinstance(args, dict):
                hint = next((str(args[k]) for k in ("command", "file_path", "pattern", "url") if k in args), "")
            return f"{part.get('name', 'tool')}: {hint}" if hint else str(part.get("name", "tool"))
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            return str(part["text"])
    return ""


def _newest_transcript(projects: Path, session_id: str | None) -> Path | None:
    """The session's transcript if it is there, else the newest one; two levels, never through a link."""
    best: tuple[float, Path] | None = None
    try:
        dirs = [d for d in os.scandir(projects) if d.is_dir(follow_symlinks=False)]
    except OSError:
        return None
    for d in dirs[:256]:
        try:
            entries = list(os.scandir(d.path))[:4096]
        except OSError:
            continue
        for e in entries:
            if not e.name.endswith(".jsonl") or not e.is_file(follow_symlinks=False):
                continue
            if session_id and e.name == f"{session_id}.jsonl":
                return Path(e.path)
            mtime = e.stat(follow_symlinks=False).st_mtime
            if best is None or mtime > best[0]:
                best = (mtime, Path(e.path))
    return best[1] if best else None


def snapshot(tallies: Tallies | None = None, root: Path | None = None) -> list[BottleView]:
    tallies = tallies or Tallies()
    out = []
    for row in list_bottles(root):
        state = StateDir(row.slug, root)
        requests = pending(state)
        try:
            isolation = str((state.read().manifest.get("bottle") or {}).get("isolation") or "container")
        except (OSError, ValueError, AttributeError):
            isolation = "?"
        out.append(
            BottleView(
                slug=row.slug,
                agent=row.agent,
                backend=row.backend,
                isolation=isolation,
                state=state_of(row, requests),
                status=row.status,
                since=_since(state),
                doing=doing(state, row.session_id) if row.status.startswith(("running", "blocked")) else "",
                egress=tallies.read(state.audit_path),
                requests=requests,
                ports=[f"{p.address}:{p.host}->{p.guest}" for p in row.ports],
            )
        )
    return out
