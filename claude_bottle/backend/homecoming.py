"""What comes home from a bottle that keeps its files elsewhere (a remote Docker engine's volumes, a
cluster's claim), the same for every backend: each tar stream (a trip) is unpacked as it arrives into a
fresh folder of the state dir, within the unpacker's budgets (unpack.py), then each part is put in place:
the audit log with the operator's own lines kept (`merge_log`), the requests as the guard wrote them, a
folder by rename.

A trip that stopped at a budget is not put in place: what it unpacked is kept aside whole in
`<state>/home-partial` (nothing reads it as the bottle's files), its refusals and the reason are in
`home-skipped.txt`, and `TripCut` is raised. The backend preserves the bottle (`CUT`) and from then on
carries only its log on its own: the rest would stop at the same place again, so no verb waits on it
(`keep --release` lets the next `pull` try again). A trip that failed otherwise (the engine or the cluster
did not answer, a stream cut short) is a `BackendError`; the backend preserves a stopped bottle as
`PENDING`, and the next `pull` (or `verify`, `logs --egress`, ...) finishes the job.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from claude_bottle import process
from claude_bottle.bottle.state import StateDir, write_private
from claude_bottle.errors import BackendError, BottleError
from claude_bottle.guard.audit import chained_after
from claude_bottle.hostfs.unpack import Limits, Unpacked, unpack
from claude_bottle.hostfs.walk import remove_tree

__all__ = [
    "CUT",
    "LIMITS",
    "PARTIAL",
    "PENDING",
    "Homecoming",
    "Trip",
    "TripCut",
    "is_cut",
    "is_pending",
    "merge_log",
    "preserve_cut",
    "put_in_place",
    "refuse_start",
]

PENDING = "files still on"  # preserved: a trip failed (`files still on engine NAME ...`, `... on cluster ...`)
CUT = "too much to bring home"  # preserved: a trip stopped at a budget; only the log travels on its own
PARTIAL = "home-partial"  # what a trip that stopped at a budget had unpacked
LIMITS = Limits()  # every trip's budgets (a test makes them small)


class TripCut(BackendError):
    """A trip home stopped at a budget: one line saying why, where what came is, and where the rest is."""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def is_pending(state: StateDir) -> bool:
    return (state.preserved() or "").startswith(PENDING)


def is_cut(state: StateDir) -> bool:
    return (state.preserved() or "").startswith(CUT)


def preserve_cut(state: StateDir, exc: TripCut) -> None:
    state.preserve(_one_line(f"{CUT}: {exc}"))


def refuse_start(state: StateDir) -> None:
    """A bottle whose files did not all come home is not started again from what did: its engine's or its
    cluster's copy, newer, would be replaced by the older one here."""
    why = state.preserved() or ""
    if why.startswith((CUT, PENDING)):
        raise BottleError(
            f"{state.slug} is preserved ({why}): its files did not all come home; `claude-bottle pull "
            f"{state.slug}` tries again, or `claude-bottle keep {state.slug} --release` starts it from what did"
        )


def merge_log(local: Path, fetched: bytes) -> bytes:
    """The audit log that came home, with the operator's own lines kept: those the CLI appended here
    (grant, revoke, answers) are not in the guard's copy, so each one past the copies' common lines is
    appended again after them, chained anew. Anything else the copy here has that the engine's does not is
    kept aside (`egress.jsonl.diverged-N`) and the engine's copy taken."""
    try:
        old = local.read_bytes()
    except FileNotFoundError:
        return fetched
    if fetched.startswith(old):
        return fetched
    old_lines, new_lines = old.splitlines(keepends=True), fetched.splitlines(keepends=True)
    common = 0
    while common < min(len(old_lines), len(new_lines)) and old_lines[common] == new_lines[common]:
        common += 1
    extra = old_lines[common:]
    records = []
    for raw in extra:
        try:
            rec = json.loads(raw)
        except ValueError:
            rec = None
        if not isinstance(rec, dict) or rec.get("kind") != "operator":
            n = 1
            while local.with_name(f"{local.name}.diverged-{n}").exists():
                n += 1
            write_private(local.with_name(f"{local.name}.diverged-{n}"), old)
            return fetched
        rec.pop("prev", None)
        records.append(rec)
    out = fetched if fetched.endswith(b"\n") or not fetched else fetched + b"\n"
    for rec in records:
        out += chained_after(out, rec)
    return out


def put_in_place(new: Path, target: Path) -> None:
    """`new` in place of `target` (whatever was there removed without following a link)."""
    if not new.is_dir() or new.is_symlink():
        return
    remove_tree(target)
    new.rename(target)


class Trip:
    """One tar stream home: `read` unpacks it (hand it to the transfer as its reader) into `dest`."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.got: Unpacked | None = None

    def read(self, stream: IO[bytes]) -> None:
        self.got = unpack(stream, self.dest, limits=LIMITS)


class Homecoming:
    """The trips of one homecoming, their refusals, and whether one stopped at a budget (then no further
    trip is made: `stopped`). `where` says where the files stay (for the message)."""

    def __init__(self, state: StateDir, *, where: str) -> None:
        self.state, self.where = state, where
        self.skipped: list[str] = []
        self.stopped: str | None = None

    @property
    def partial(self) -> Path:
        return self.state.path / PARTIAL

    @contextlib.contextmanager
    def trip(self) -> Iterator[Trip]:
        """A trip into a fresh folder of the state dir, removed afterwards (what it unpacked kept aside if it
        stopped at a budget)."""
        holder = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.state.path))
        trip = Trip(holder / "in")
        try:
            yield trip
            if trip.got is not None and trip.got.over_budget and trip.dest.is_dir():
                remove_tree(self.partial)
                trip.dest.rename(self.partial)
        finally:
            remove_tree(holder)

    def arrived(self, trip: Trip, result: process.Result, what: str, *, ok: tuple[int, ...] = (0,)) -> bool:
        """Did the trip bring a whole tar (put it in place, then)? False if it stopped at a budget (the
        transfer was cut off, whatever its exit says); a BackendError, in one line, if it failed."""
        got = trip.got or Unpacked(stopped="nothing came")
        self.skipped += got.skipped
        if got.over_budget:
            self.stopped = got.stopped
            return False
        if result.returncode not in ok:
            process.check(result, what)
        if got.stopped:
            raise BackendError(_one_line(f"{what} failed: {got.stopped}"))
        return True

    def take_log(self, folder: Path) -> None:
        """The audit log (the operator's own lines kept) and the requests, from `folder` of what came."""
        state = self.state
        for name, target in (("egress.jsonl", state.audit_path), ("requests.jsonl", state.path / "requests.jsonl")):
            got = folder / name
            if got.is_file() and not got.is_symlink():
                data = got.read_bytes()
                write_private(target, merge_log(target, data) if name == "egress.jsonl" else data)

    def finish(self, *, work: bool = True) -> None:
        """After the trips: the refusals written down (a homecoming that carried the work replaces an earlier
        one's; one that carried only the log adds to them), then TripCut if a trip stopped at a budget."""
        state = self.state
        lines = [f"{s!r}\n" for s in self.skipped]
        if self.stopped:
            lines.append(f"# stopped: {self.stopped}\n")
        if work and not self.stopped:
            remove_tree(self.partial)  # an earlier trip's, superseded
        if lines:
            if not work and state.home_skipped.is_file():
                lines.insert(0, state.home_skipped.read_text(encoding="utf-8", errors="replace"))
            write_private(state.home_skipped, "".join(lines))
        elif work:
            state.home_skipped.unlink(missing_ok=True)  # an earlier trip's refusals are not this one's
        if self.stopped:
            kept = f"what came is in {self.partial}" if self.partial.is_dir() else "nothing of it was kept"
            raise TripCut(_one_line(f"{self.stopped}; {kept}, the rest is still {self.where}"))
