"""What bottles exist: state dirs joined with one inventory call per backend in use. Kept light for `ls`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from claude_bottle.backend import PublishedPort, get_bottle_backend
from claude_bottle.bottle.claude_code import NORMAL_ENDS, notice_crash, run_end
from claude_bottle.bottle.state import list_state_dirs
from claude_bottle.errors import BottleError

__all__ = ["BottleRow", "leftovers_hint", "list_bottles"]


@dataclass(frozen=True)
class BottleRow:
    slug: str
    agent: str
    backend: str
    status: str
    created: str
    workspace: str | None
    preserved: str | None
    resumable: bool = False
    session_id: str | None = None
    ports: tuple[PublishedPort, ...] = ()  # while it runs

    def as_json(self) -> dict[str, object]:
        return {
            "slug": self.slug,
            "agent": self.agent,
            "backend": self.backend,
            "status": self.status,
            "created": self.created,
            "workspace": self.workspace,
            "preserved": self.preserved,
            "resumable": self.resumable,
            "session_id": self.session_id,
            "ports": [{"guest": p.guest, "host": p.host, "address": p.address} for p in self.ports],
        }


def list_bottles(root: Path | None = None) -> list[BottleRow]:
    """Every bottle with a state dir, its live status from one inventory call per backend in use."""
    records = []
    for d in list_state_dirs(root):
        try:
            records.append((d, d.read()))  # an odd dir reads as a stub (state.StateDir.read)
        except (OSError, BottleError):
            continue  # removed while we listed
    live: dict[str, dict[str, str]] = {}
    published: dict[str, tuple[PublishedPort, ...]] = {}
    for name in {r.backend for _, r in records}:
        try:
            statuses = get_bottle_backend(name).statuses()
        except BottleError:
            statuses = {}
        live[name] = {slug: s.status for slug, s in statuses.items()}
        published.update({slug: s.ports for slug, s in statuses.items() if s.ports})
    rows = []
    for d, recorded in records:
        engine = live.get(recorded.backend, {}).get(recorded.slug)
        try:
            r = notice_crash(d, recorded, engine)
        except (OSError, BottleError):
            r = recorded  # one odd state dir never breaks the listing of the others
        status: str = r.status
        if r.status == "running":
            status = engine or "gone"
            if status == "running" and not r.attached_pid and run_end(d) in NORMAL_ENDS:
                status = "running (claude finished)"  # a detached run that ended well; the bottle idles
        elif r.status == "creating" and d.abandoned(r):
            status = "abandoned (owner died mid-start)"
        elif r.status == "blocked" and r.wants:
            status = f"blocked (wants {', '.join(r.wants)})"
        resumable = d.resumable(r)
        rows.append(
            BottleRow(
                r.slug,
                r.agent,
                r.backend,
                status,
                r.created,
                r.workspace,
                d.preserved(),
                resumable,
                r.session_id,
                published.get(r.slug, ()) if status == "running" else (),
            )
        )
    return rows


def leftovers_hint(root: Path | None = None) -> str | None:
    """One line for `start` when earlier runs left things behind (state dirs only: no engine calls)."""
    count = 0
    for d in list_state_dirs(root):
        try:
            r = d.read()
        except (OSError, BottleError):
            continue
        left = r.status == "failed" or (r.status == "incomplete" and not d.fresh()) or d.abandoned(r)
        if left and not d.preserved():
            count += 1
    if not count:
        return None
    return f"note: {count} leftover bottle{'s' * (count > 1)} from earlier runs; `claude-bottle cleanup` reaps them"
