"""Bottle state on the host: ~/.claude-bottle/state/<slug>/ with an atomic, versioned bottle.json (record.py).

(Over 450 lines: a state dir's every file (record, lock, .preserve, snapshots, summaries) is one object's,
so they change together.)"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import stat
import string
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from claude_bottle.bottle.record import SCHEMA_VERSION, STATUSES, BottleRecord, now_iso
from claude_bottle.errors import BottleError, NotFoundError
from claude_bottle.hostfs.walk import Walk, remove_tree, tree_size
from claude_bottle.identity import DEFAULT_NAMESPACE, namespace

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "BottleRecord",
    "StateDir",
    "all_state_roots",
    "bottle_home",
    "list_state_dirs",
    "new_slug",
    "now_iso",
    "pid_alive",
    "process_started",
    "resolve_slug",
    "state_root",
    "write_private",
]

SNAPSHOT_BYTES = 256 * 1024 * 1024
SNAPSHOTS_KEPT = 10
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,29}-[a-z0-9]{5}$")
_ALPHABET = string.ascii_lowercase + string.digits


def bottle_home() -> Path:
    return Path(os.environ.get("CLAUDE_BOTTLE_HOME") or Path.home() / ".claude-bottle").expanduser()


def state_root(ns: str | None = None) -> Path:
    """Where a namespace's bottles keep their state dirs: `state/` for the default one, `state.<ns>/`
    for the others, so a namespace's `ls` and `cleanup` never see another's bottles."""
    ns = ns or namespace()
    return bottle_home() / ("state" if ns == DEFAULT_NAMESPACE else f"state.{ns}")


def all_state_roots(home: Path | None = None) -> list[Path]:
    """Every namespace's state root under the home (an agent-writable path is one whatever its namespace)."""
    home = home or bottle_home()
    if not home.is_dir():
        return []
    return sorted(p for p in home.iterdir() if (p.name == "state" or p.name.startswith("state.")) and p.is_dir())


def new_slug(agent: str) -> str:
    return f"{agent}-{''.join(secrets.choice(_ALPHABET) for _ in range(5))}"


def write_private(
    path: Path, data: str | bytes, *, mode: int = 0o600, before_replace: Callable[[], None] | None = None
) -> None:
    """Write atomically (temp file in the same dir, fsync, rename) with the given mode and the old owner.
    `before_replace` runs just before the rename; whatever it raises leaves path as it was."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        owner = path.stat()
    except FileNotFoundError:
        owner = None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        if owner is not None and os.getuid() == 0:
            # A rewrite keeps the file's owner (e.g. the guard's uid on its policy file).
            os.fchown(fd, owner.st_uid, owner.st_gid)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise


FRESH_SECONDS = 60  # a state dir without bottle.json this young may be a start between mkdir and its record


def pid_alive(pid: int | None, started: float | None = None) -> bool:
    """Is this process still the one that was recorded (same pid and, when known, same start time)?"""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's
    now_started = process_started(pid) if started else None
    return now_started is None or abs(now_started - (started or 0.0)) < 1.0


def process_started(pid: int) -> float | None:
    """Start time of a process (seconds since boot), to tell a live owner from a reused pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class StateDir:
    """One bottle's state directory (mode 0700)."""

    def __init__(self, slug: str, root: Path | None = None) -> None:
        if not SLUG_RE.match(slug):
            raise BottleError(f"{slug!r} is not a bottle slug (expected AGENT-xxxxx)")
        self.slug = slug
        self.path = (root or state_root()) / slug

    # Layout.
    @property
    def record_path(self) -> Path:
        return self.path / "bottle.json"

    @property
    def audit_path(self) -> Path:
        return self.path / "egress.jsonl"

    @property
    def claude_home(self) -> Path:
        return self.path / "claude-home"

    @property
    def home_workspace(self) -> Path:
        """A bottle on a remote engine: its workspace as it last came home (mount mode)."""
        return self.path / "workspace"

    @property
    def home_skipped(self) -> Path:
        """What the last trip home from a remote engine refused, one quoted member per line."""
        return self.path / "home-skipped.txt"

    @property
    def preserve_path(self) -> Path:
        return self.path / ".preserve"

    def create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.parent.chmod(0o700)
        self.path.mkdir(mode=0o700)  # fails if it exists: slugs are never reused

    def exists(self) -> bool:
        return self.record_path.is_file()

    def read(self) -> BottleRecord:
        """The record. A state dir without a readable one (a crash between mkdir and the first record, a
        torn or hand-edited file) still reads, as a stub from what its name tells: one odd dir must never
        stop `ls`, `cleanup` or `start` for the others. Only a missing dir is an error."""
        try:
            raw = self.record_path.read_bytes()
        except FileNotFoundError:
            if not self.path.is_dir():
                raise NotFoundError(f"no bottle {self.slug!r}: `claude-bottle ls` lists them") from None
            return self._stub("incomplete", "no bottle.json: a start that never wrote its record")
        except OSError as exc:
            return self._stub("failed", f"bottle.json could not be read ({exc.strerror})")
        try:
            return BottleRecord.from_json(json.loads(raw))
        except (ValueError, TypeError):
            # Keep the bad copy aside (once: the same bytes are not copied again) and carry on.
            bad = self._keep_aside(raw)
            return self._stub("failed", f"bottle.json was unreadable (kept as {bad.name})")

    def read_whole(self) -> BottleRecord:
        """The record of a bottle a verb acts on. A stub (no readable bottle.json) has no backend or
        workspace to act on: say what it is and how to be rid of it."""
        record = self.read()
        if record.bottle == "?":
            raise BottleError(
                f"{self.slug} is not a whole bottle ({record.error}): `claude-bottle stop {self.slug} --rm` or "
                "`claude-bottle cleanup` removes it"
            )
        return record

    def _stub(self, status: str, why: str) -> BottleRecord:
        return BottleRecord(
            slug=self.slug, agent=self.slug.rsplit("-", 1)[0], bottle="?", backend="?", status=status, error=why
        )

    def _keep_aside(self, raw: bytes) -> Path:
        for old in sorted(self.path.glob("bottle.corrupt-*")):
            with contextlib.suppress(OSError):
                if not old.is_symlink() and old.read_bytes() == raw:
                    return old
        bad = self.path / f"bottle.corrupt-{time.time_ns()}"
        write_private(bad, raw)
        return bad

    def fresh(self) -> bool:
        """Made moments ago (a start may be between its mkdir and its first record)."""
        try:
            return time.time() - self.path.stat().st_mtime < FRESH_SECONDS
        except OSError:
            return False

    def resumable(self, record: BottleRecord | None = None) -> bool:
        """Has this bottle's session a transcript to resume from (a bottle that never ran has none)?"""
        record = record or self.read()
        projects = self.claude_home / "projects"
        if not record.session_id or projects.is_symlink() or not projects.is_dir():
            return False
        return any(projects.glob(f"*/{record.session_id}.jsonl"))

    def write(self, record: BottleRecord) -> None:
        record.updated = now_iso()
        write_private(self.record_path, record.to_json())

    def update(self, **changes: Any) -> BottleRecord:
        record = self.read()
        for k, v in changes.items():
            setattr(record, k, v)
        self.write(record)
        return record

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Per-bottle lock so two CLIs do not start/stop the same bottle at once."""
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BottleError(f"bottle {self.slug} is busy: another claude-bottle command holds it") from None
            yield
        finally:
            os.close(fd)

    def preserved(self) -> str | None:
        try:
            return self.preserve_path.read_text(encoding="utf-8").strip() or "kept"
        except FileNotFoundError:
            return None

    def preserve(self, reason: str) -> None:
        write_private(self.preserve_path, reason + "\n")

    def foreign_files(self) -> bool:
        """Did this bottle's agent run as someone this user cannot remove files of (the bottle user, for a
        normal user)? Then its files go through the backend first (BottleBackend.release_files)."""
        if os.getuid() == 0:
            return False
        ids = self.read().agent_ids
        return len(ids) == 2 and ids[0] != os.getuid()

    def remove(self) -> None:
        remove_tree(self.path)

    def snapshot_transcript(self) -> Path | None:
        """Copy the agent's session transcripts into transcript/<time>/ (the live ones keep changing).

        The agent wrote these files, so the copy is bounded: regular `.jsonl` files only, opened without
        following links and walked by descriptor; sparse files stay sparse (holes are not copied); at most
        SNAPSHOT_BYTES (and half the free space) per snapshot, and the newest SNAPSHOTS_KEPT snapshots."""
        projects = self.claude_home / "projects"
        if projects.is_symlink() or not projects.is_dir():
            return None
        base = self.path / "transcript"
        dest = base / datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        try:
            free = os.statvfs(self.path).f_bavail * os.statvfs(self.path).f_frsize
        except OSError:
            free = 0
        budget = min(SNAPSHOT_BYTES, free // 2)
        copied, skipped = 0, []
        walk = Walk(projects)
        for d in walk:
            for entry in d.entries:
                if not entry.name.endswith(".jsonl"):
                    continue
                try:
                    fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=d.fd)
                except OSError:
                    continue
                with os.fdopen(fd, "rb") as src:
                    st = os.fstat(src.fileno())
                    if not stat.S_ISREG(st.st_mode):  # a FIFO would hang us, a device would never end
                        continue
                    held = min(st.st_size, st.st_blocks * 512)
                    if held > budget:
                        skipped.append(f"{d.path(entry.name)} ({st.st_size} bytes): over the snapshot budget")
                        continue
                    target = dest / d.path(entry.name)
                    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    budget -= _copy_sparse(src.fileno(), target, budget)
                    copied += 1
        if walk.truncated or walk.unreadable:
            skipped.append(f"the folder tree was too deep or large to copy whole ({walk.unreadable} unreadable)")
        if not copied:
            return None
        if skipped:
            write_private(dest / "SKIPPED.txt", "\n".join(skipped) + "\n")
        for old in sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink())[:-SNAPSHOTS_KEPT]:
            remove_tree(old)
        return dest

    def preserve_crash(self, why: str, *, snapshot: bool = True) -> None:
        """Keep everything needed to look at and resume a bottle that ended badly (SPEC S2). Without
        `snapshot` (from `ls`, which must stay fast and write little) the snapshot is owed: the next stop
        or resume takes it, before anything could change the transcript."""
        if snapshot:
            with contextlib.suppress(OSError):
                self.snapshot_transcript()
        self.preserve("crash")
        self.update(status="crashed", error=why, attached_pid=None, snapshot_due=not snapshot)

    def preserve_block(self, wants: list[str], *, snapshot: bool = True) -> None:
        """A bottle that asked for a package it lacks: kept, with its transcript, until the operator answers
        (SPEC S4). Without `snapshot` (from `ls`) the snapshot is owed to the next stop, as for a crash."""
        if snapshot:
            with contextlib.suppress(OSError):
                self.snapshot_transcript()
        self.preserve("capability-block")
        self.update(status="blocked", wants=wants, error=None, attached_pid=None, snapshot_due=not snapshot)

    def settle_snapshot(self) -> None:
        """Take the snapshot an earlier crash notice owed."""
        if self.read().snapshot_due:
            with contextlib.suppress(OSError):
                self.snapshot_transcript()
            self.update(snapshot_due=False)

    def busy(self) -> bool:
        """Does another claude-bottle process hold this bottle's lock right now? (Asked without creating the
        lock file: asking must not change the dir, whose age tells a start in progress from a leftover.)"""
        try:
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def abandoned(self, record: BottleRecord | None = None) -> bool:
        """A start whose owning CLI died before it finished (crash, SIGKILL)."""
        record = record or self.read()
        return record.status == "creating" and not pid_alive(record.owner_pid, record.owner_started)

    def summary(self, work: Callable[[StateDir], str | None] | None = None) -> StateSummary:
        record = self.read()
        home = self.claude_home
        sessions = list(home.glob("projects/*/*.jsonl")) if home.is_dir() and not home.is_symlink() else []
        snapshots = (self.path / "transcript").is_dir() and any((self.path / "transcript").iterdir())
        size, _complete = tree_size(self.path)
        return StateSummary(
            slug=self.slug,
            path=self.path,
            status=record.status,
            resumable=self.resumable(record),
            transcript=bool(sessions or snapshots),
            rebuilt_dockerfile=record.rebuilt and (self.path / "Dockerfile").exists(),
            preserved=self.preserved(),
            size=size,
            note=record.error if record.bottle == "?" else None,  # a stub: say why nothing more is known
            work=work(self) if work is not None else None,
        )


@dataclass(frozen=True)
class StateSummary:
    """What removing a state dir would lose."""

    slug: str
    path: Path
    status: str
    resumable: bool
    transcript: bool
    rebuilt_dockerfile: bool
    preserved: str | None
    size: int
    note: str | None = None
    work: str | None = None  # worktree mode: commits and changes not in the operator's branches

    def describe(self) -> str:
        flags = [
            f
            for f, on in (
                ("resumable", self.resumable),
                ("transcript", self.transcript),
                ("rebuilt Dockerfile", self.rebuilt_dockerfile),
                (f".preserve ({self.preserved})", bool(self.preserved)),
            )
            if on
        ]
        if self.work:
            flags.append(self.work)
        out = f"{self.slug} [{self.status}] {human_size(self.size)}" + (f": {', '.join(flags)}" if flags else "")
        return out + (f" ({self.note})" if self.note else "")


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def list_state_dirs(root: Path | None = None) -> list[StateDir]:
    base = root or state_root()
    if not base.is_dir():
        return []
    return [StateDir(p.name, base) for p in sorted(base.iterdir()) if p.is_dir() and SLUG_RE.match(p.name)]


def resolve_slug(text: str, root: Path | None = None) -> StateDir:
    """A full slug, or a prefix that names exactly one bottle."""
    dirs = list_state_dirs(root)
    exact = [d for d in dirs if d.slug == text]
    if exact:
        return exact[0]
    matches = [d for d in dirs if d.slug.startswith(text)] if text else []
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NotFoundError(f"no bottle matches {text!r}: `claude-bottle ls` lists them")
    names = ", ".join(d.slug for d in matches[:5])
    raise NotFoundError(f"{text!r} matches {len(matches)} bottles ({names}): type more of the slug")


def _copy_sparse(src: int, target: Path, budget: int) -> int:
    """Copy the data of src into a new private file, leaving holes as holes, at most `budget` bytes of
    data. Returns the bytes written."""
    written, off = 0, 0
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        size = os.fstat(src).st_size
        while off < size and written < budget:
            try:
                start = os.lseek(src, off, os.SEEK_DATA)
                end = os.lseek(src, start, os.SEEK_HOLE)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole is left
                    break
                start, end = off, size  # no SEEK_DATA on this filesystem: all of it is data
            off = start
            while off < end and written < budget:
                chunk = os.pread(src, min(1024 * 1024, end - off, budget - written), off)
                if not chunk:
                    end = off
                    break
                os.pwrite(out, chunk, off)
                off += len(chunk)
                written += len(chunk)
            if written < budget:
                off = max(off, end)
        os.ftruncate(out, min(size, off) if written >= budget else size)
    finally:
        os.close(out)
    return written
