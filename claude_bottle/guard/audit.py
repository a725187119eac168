"""Audit log: one JSON line per decision, written when the decision is made, on space the agent cannot take.

The log lives on the host, often on the same filesystem as the agent's writable `~/.claude`, so the
agent can fill that filesystem. The guard keeps the log's next blocks allocated ahead of its end
(`fallocate` with KEEP_SIZE), so its lines land in space nobody else can take; when it can no longer
extend that reserve it says so and the guard refuses new connections (a decision it cannot record is
a decision it does not make). Each line is one `write(2)` on an O_APPEND descriptor.

Lines are also budgeted (bytes per second with a burst), so a looping agent cannot turn the log into a
disk filler: what is over budget is counted and summarised once a second on a timer, never dropped
silently, and the proxy refuses an allow it could not record.

Lines are chained: each carries `prev`, the hash of the line before it in the file, so an edited,
removed or inserted line breaks the chain where it happened (`verify_chain`, `claude-bottle verify`).
Writers (the guard, and the CLI's operator lines) append under an exclusive lock and hash the file's
actual last line whenever someone else wrote since, so the two never fork the chain.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["GENESIS", "AuditLog", "Budget", "Timer", "append_chained", "cap", "line_hash", "verify_chain"]

RESERVE = 4 * 1024 * 1024  # bytes kept allocated past the end of the log
MAX_FIELD = 2048  # longest string field written (agent-shaped text is cut, with the cut length noted)
FALLOC_FL_KEEP_SIZE = 1


GENESIS = "0" * 32  # the `prev` of a log's first line
CHAIN_BYTES = len('"prev":"",') + len(GENESIS)  # what chaining adds to a line
TAIL = 64 * 1024  # enough to hold the last line (fields are capped at MAX_FIELD characters)


def line_hash(line: bytes) -> str:
    """A line's hash, as the next line's `prev` names it (the line without its newline)."""
    return hashlib.sha256(line.strip(b"\n")).hexdigest()[:32]


def last_line_hash(fd: int, size: int) -> str:
    """The hash of the last line of a file of `size` bytes, read through `fd` (a cut line counts as it is)."""
    if size <= 0:
        return GENESIS
    n = min(size, TAIL)
    data = os.pread(fd, n, size - n).rstrip(b"\n")
    return line_hash(data.rsplit(b"\n", 1)[-1]) if data else GENESIS


def _chained(data: bytes, prev: str) -> bytes:
    """A JSON object line with `prev` as its first field."""
    return b'{"prev":"' + prev.encode() + (b'",' if data[1:2] != b"}" else b'"') + data[1:]


def chained_after(log: bytes, record: dict[str, Any]) -> bytes:
    """One line for `record`, chained after the last line of `log` (a log held in memory)."""
    body = log.rstrip(b"\n")
    prev = line_hash(body.rsplit(b"\n", 1)[-1]) if body else GENESIS
    return _chained((json.dumps(record, separators=(",", ":")) + "\n").encode(), prev)


def append_chained(path: Path, record: dict[str, Any]) -> None:
    """Append one line to a chained log from outside the guard (the CLI's operator lines), under the lock."""
    wfd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        rfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(wfd, fcntl.LOCK_EX)
            prev = last_line_hash(rfd, os.fstat(wfd).st_size)
            os.write(wfd, _chained((json.dumps(record, separators=(",", ":")) + "\n").encode(), prev))
        finally:
            os.close(rfd)
    finally:
        os.close(wfd)


def verify_chain(path: Path) -> tuple[int, int, list[str]]:
    """(lines, lines before chaining began, problems): every chained line must name the hash of the line
    before it; the first problem says where the record was changed."""
    problems: list[str] = []
    prev = GENESIS
    unchained = 0
    chained_seen = False
    count = 0
    with path.open("rb") as f:
        for count, raw in enumerate(f, start=1):
            line = raw.rstrip(b"\n")
            try:
                got = json.loads(line).get("prev")
            except (ValueError, AttributeError):
                problems.append(f"line {count} is not whole JSON (cut by a full disk, or edited)")
                got = None
            if got is None:
                if chained_seen and not problems:
                    problems.append(f"line {count} carries no chain: a line was inserted or rewritten there")
                unchained += 0 if chained_seen else 1
            elif got != prev and not problems:
                problems.append(
                    f"line {count} does not follow line {count - 1}: a line was edited, removed or inserted "
                    f"between them"
                )
            chained_seen = chained_seen or got is not None
            prev = line_hash(line)
    return count, unchained, problems


def cap(text: str, limit: int = MAX_FIELD) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...[+{len(text) - limit} chars]"


def _fallocator() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


@dataclass
class Budget:
    """A token bucket over bytes: `rate` per second sustained, `burst` at once. What does not fit is counted."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)
    suppressed: Counter[tuple[str, str]] = field(default_factory=Counter)

    def take(self, n: int) -> bool:
        now = time.monotonic()
        if self.tokens < 0:
            self.tokens = self.burst
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if n > self.tokens:
            return False
        self.tokens -= n
        return True


class AuditLog:
    """Append-only JSON lines. `write` returns False when the line could not be recorded."""

    def __init__(
        self, path: Path | None, *, bottle: str = "", rate: float = 32 * 1024, burst: float = 1024 * 1024
    ) -> None:
        self.bottle = bottle
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if path else sys.stdout.fileno()
        self._own_fd = path is not None
        # The chain: the hash of the last line and the file's size after it, as this guard wrote them.
        self._rfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC) if path else -1
        self._prev = GENESIS
        self._end = -1
        self._fallocate = _fallocator() if path else None
        self._reserved_to = 0  # file offset up to which blocks are allocated
        self.low = False  # the reserve could not be extended: space is running out
        self.failed = False  # a line could not be written
        self._broken = False  # the last write was cut: start the next one on a fresh line
        self._retried = 0.0
        self.budgets = {"proxy": Budget(rate, burst), "dns": Budget(rate / 4, burst / 32)}
        self._reserve()

    # -- space -----------------------------------------------------------------------------------
    def _reserve(self) -> None:
        if self._fallocate is None or not self._own_fd:
            return
        size = os.fstat(self._fd).st_size
        if self._reserved_to - size > RESERVE // 2:
            return
        rc = self._fallocate(self._fd, FALLOC_FL_KEEP_SIZE, size, RESERVE)
        if rc == 0:
            self._reserved_to = size + RESERVE
            self.low = False
            return
        err = ctypes.get_errno()
        if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            self._fallocate = None  # this filesystem cannot reserve: only fail-closed protects the log
            return
        self.low = True

    def can_record(self) -> bool:
        """May the guard make a new allow decision? Not when the log has no room left to say so (looked
        at again at most once a second, so space freed by the operator brings the guard back)."""
        if (self.failed or self.low) and time.monotonic() - self._retried >= 1.0:
            self._retried = time.monotonic()
            self._reserved_to = 0
            self._reserve()
            if not self.low and self._fallocate is not None:
                self.failed = False
        return not self.failed and not self.low

    # -- lines -----------------------------------------------------------------------------------
    def line(self, fields: dict[str, Any]) -> bytes:
        record: dict[str, Any] = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "bottle": self.bottle}
        record.update(fields)
        return (json.dumps(record, separators=(",", ":")) + "\n").encode()

    def write(self, **fields: Any) -> bool:
        return self.write_raw(self.line(fields))

    def write_raw(self, data: bytes) -> bool:
        if not self._own_fd:
            return self._append(data)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # the CLI's operator lines take it too
        except OSError as exc:
            self._fail(exc)
            return False
        try:
            size = os.fstat(self._fd).st_size
            if size != self._end:  # someone else appended since our last line (or this is the first)
                self._prev = last_line_hash(self._rfd, size)
            line = _chained(data, self._prev)
            ok = self._append(line)
            self._prev, self._end = (line_hash(line), os.fstat(self._fd).st_size) if ok else (self._prev, -1)
        except OSError as exc:
            self._fail(exc)
            ok = False
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        return ok

    def _append(self, data: bytes) -> bool:
        if self._broken:
            data = b"\n" + data
        try:
            n = os.write(self._fd, data)
        except OSError as exc:
            self._fail(exc)
            return False
        if n != len(data):  # a short append: the line is cut; keep the next one whole on its own line
            self._broken = True
            self._fail(OSError(errno.ENOSPC, "short write"))
            return False
        self._broken = False
        self._reserve()
        return True

    def budgeted(self, budget: str, key: tuple[str, str], **fields: Any) -> bool:
        """Write a line if the budget allows; otherwise count it for the next summary."""
        data = self.line(fields)
        b = self.budgets[budget]
        if not b.take(len(data) + CHAIN_BYTES):
            b.suppressed[key] += 1
            return False
        return self.write_raw(data)

    def admit(self, budget: str, size: int = 400) -> bool:
        """Room in the budget for a line of about `size` bytes (taken now, so it cannot be raced away)."""
        return self.budgets[budget].take(size)

    def count(self, budget: str, key: tuple[str, str]) -> None:
        self.budgets[budget].suppressed[key] += 1

    def flush_summaries(self) -> None:
        """One line per budget that suppressed anything since the last call (called once a second)."""
        for name, b in self.budgets.items():
            if not b.suppressed:
                continue
            counts = [{"decision": d, "reason": r, "count": c} for (d, r), c in sorted(b.suppressed.items())]
            b.suppressed.clear()
            self.write(
                kind="summary",
                source=name,
                suppressed=sum(c["count"] for c in counts),
                counts=counts[:20],
                note="over the audit budget: counted, not logged one by one",
            )

    def close(self) -> None:
        if self._own_fd:
            # Give back the reserve beyond the last line.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, os.fstat(self._fd).st_size)
            os.close(self._fd)
            os.close(self._rfd)
            self._own_fd = False

    def _fail(self, exc: OSError) -> None:
        if not self.failed:
            print(
                f"claude-bottle guard: audit log write failed ({exc.strerror}): refusing new requests", file=sys.stderr
            )
        self.failed = True


class Timer:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def ms(self) -> float:
        return round((time.monotonic() - self.start) * 1000, 1)
