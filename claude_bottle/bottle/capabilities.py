"""Capability requests on the host (SPEC S4): what a bottle asked for (the guard's `requests.jsonl`, which
only the guard writes), what the operator answered (`decisions.json`, which only the CLI writes), and
what is still pending. Light: `ls` and `requests` import it.

Every request is judged again here, by the guard's own rules (egress.capability.parse_name), before
anything acts on it: a line the guard did not write is skipped, never trusted.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from claude_bottle.bottle.state import StateDir, write_private
from claude_bottle.guard.capability import KINDS, PACKAGE_KINDS, Invalid, parse_name

__all__ = ["Request", "decide", "decisions", "guard_decisions", "pending", "read_requests"]

REQUESTS_FILE = "requests.jsonl"
DECISIONS_FILE = "decisions.json"
MAX_READ = 1024 * 1024


@dataclass(frozen=True)
class Request:
    slug: str
    id: str
    kind: str
    name: str
    reason: str
    time: str

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def package(self) -> bool:
        return self.kind in PACKAGE_KINDS

    def age(self, now: float | None = None) -> str:
        try:
            t = datetime.fromisoformat(self.time).timestamp()
        except ValueError:
            return "?"
        s = max(0, int((now or time.time()) - t))
        return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"

    def as_json(self) -> dict[str, str]:
        return {"slug": self.slug, "id": self.id, "kind": self.kind, "name": self.name, "reason": self.reason,
                "time": self.time}  # fmt: skip


def _read(state: StateDir, name: str) -> bytes:
    """A file of the state dir, read without following a link, bounded."""
    try:
        fd = os.open(state.path / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return b""
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return b""
        return f.read(MAX_READ)


def read_requests(state: StateDir) -> list[Request]:
    out = []
    for line in _read(state, REQUESTS_FILE).splitlines():
        try:
            d = json.loads(line)
            kind, name, rid = str(d["kind"]), str(d["name"]), str(d["id"])
            if kind not in KINDS or not rid.startswith("r-") or len(rid) > 20:
                continue
            parse_name(kind, name)
        except (ValueError, KeyError, TypeError, Invalid):
            continue
        out.append(Request(state.slug, rid, kind, name, str(d.get("reason", ""))[:300], str(d.get("time", ""))))
    return out


def decisions(state: StateDir) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(_read(state, DECISIONS_FILE) or b"{}")
    except ValueError:
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def pending(state: StateDir) -> list[Request]:
    answered = decisions(state)
    return [r for r in read_requests(state) if r.id not in answered]


def decide(state: StateDir, requests: list[Request], decision: str, reason: str = "") -> None:
    """Record the operator's answer (the guard learns it through its policy file: guard/files.py)."""
    known = decisions(state)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    for r in requests:
        known[r.id] = {"decision": decision, "reason": reason, "label": r.label, "time": stamp}
    write_private(state.path / DECISIONS_FILE, json.dumps(known, indent=2) + "\n")


def guard_decisions(state: StateDir) -> dict[str, tuple[str, str]]:
    """The answers as the guard reads them (its policy's `decisions`): id -> (decision, reason)."""
    return {k: (str(v.get("decision")), str(v.get("reason", ""))) for k, v in decisions(state).items()}
