"""The capability desk: the one way an agent asks for what its bottle lacks (SPEC S4, G7).

`POST /__bottle/capability` (form-encoded `kind`, `name`, `reason`, `wait`) from the bottle's own client.
Everything is judged here, where it arrives: the kind is one of apt, pip, npm, egress; the name is what
that package tool allows (letters, digits and a few separators: never a space, a quote, a `$`, a `;`, ...)
or a host[:port]; the reason is bounded and redacted like every logged string; a bottle asks at most
MAX_REQUESTS times. An accepted request is appended to the requests file (which only the guard writes:
the host reads it) and to the audit log. The operator's answer comes back in the policy file
(`decisions`), which the guard already re-reads: an egress request waits for it (bounded); a package
request is answered at once (the bottle stops; the host resumes it after a grant or a refusal).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs

__all__ = ["CAPABILITY_PATH", "KINDS", "MAX_REQUESTS", "Desk", "Invalid", "Submitted", "parse_name"]

CAPABILITY_PATH = "/__bottle/capability"
KINDS = ("apt", "pip", "npm", "egress")
PACKAGE_KINDS = ("apt", "pip", "npm")
MAX_BODY = 4096
MAX_REASON = 300
MAX_REQUESTS = 20
MAX_WAIT = 600.0
DEFAULT_WAIT = 300.0

_NAMES = {
    # Debian package names: lowercase letters, digits, + - . ; at least two characters, starting alphanumeric.
    "apt": re.compile(r"[a-z0-9][a-z0-9+.-]{1,63}"),
    # A PEP 508 name, optionally pinned (==, >=, <=, ~=) to a plain version.
    "pip": re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?(?:(?:==|>=|<=|~=)[0-9][0-9A-Za-z.+!-]{0,30})?"),
    # An npm name (optionally @scope/), optionally @version.
    "npm": re.compile(r"(?:@[a-z0-9][a-z0-9._-]{0,62}/)?[a-z0-9][a-z0-9._-]{0,62}(?:@[0-9A-Za-z.^~+-]{1,30})?"),
    # A host name or IPv4 address, optionally :port.
    "egress": re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}(?:\.[A-Za-z0-9][A-Za-z0-9-]{0,62})*(?::[0-9]{1,5})?"),
}


class Invalid(ValueError):
    """A request refused where it arrived, with the reason the agent is told."""


@dataclass(frozen=True)
class Submitted:
    id: str
    kind: str
    name: str
    reason: str

    def label(self) -> str:
        return f"{self.kind}:{self.name}"


def parse_name(kind: str, name: str) -> str:
    if kind not in KINDS:
        raise Invalid(f"unknown kind {kind[:20]!r}: use one of {', '.join(KINDS)}")
    if not _NAMES[kind].fullmatch(name):
        what = "a host[:port]" if kind == "egress" else f"an {kind} package name" if kind == "apt" else f"a {kind} name"
        raise Invalid(f"{kind}:{name[:60]!r} is not {what} (letters, digits and . _ + - only)")
    if kind == "egress" and ":" in name and not 0 < int(name.rsplit(":", 1)[1]) < 65536:
        raise Invalid(f"egress:{name[:60]}: the port must be 1-65535")
    return name


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class Desk:
    """Requests in (validated, bounded, recorded), decisions out (from the policy file)."""

    def __init__(
        self,
        path: Path | None,
        redact: Callable[[str], str],
        decisions: Callable[[], dict[str, tuple[str, str]]],
        *,
        limit: int = MAX_REQUESTS,
    ) -> None:
        self.path = path
        self.redact = redact
        self.decisions = decisions
        self.limit = limit
        self.count = self._already()
        self.asking: dict[str, Submitted] = {}  # ask mode: the pending request per destination

    def _already(self) -> int:
        """Requests made in earlier generations of the bottle count against its limit too."""
        if self.path is None:
            return 0
        try:
            with self.path.open("rb") as f:
                return sum(1 for line in f if line.strip())
        except OSError:
            return 0

    def submit(self, body: bytes) -> tuple[Submitted, float]:
        """Judge one request body; record it. Its wait (egress) is bounded."""
        if self.path is None:
            raise Invalid("this bottle takes no capability requests")
        if len(body) > MAX_BODY:
            raise Invalid(f"request over {MAX_BODY} bytes")
        try:
            form = parse_qs(body.decode("utf-8"), strict_parsing=True, max_num_fields=8)
        except (UnicodeDecodeError, ValueError):
            raise Invalid("not a form-encoded request (kind, name, reason, wait)") from None
        if any(len(v) != 1 for v in form.values()) or set(form) - {"kind", "name", "reason", "wait"}:
            raise Invalid("fields: kind, name, reason, wait (each once)")
        kind = form.get("kind", [""])[0]
        name = parse_name(kind, form.get("name", [""])[0])
        reason = form.get("reason", [""])[0]
        if len(reason) > MAX_REASON:
            raise Invalid(f"the reason is over {MAX_REASON} characters")
        reason = self.redact(_CONTROL.sub(" ", reason))
        try:
            wait = min(max(float(form.get("wait", [str(DEFAULT_WAIT)])[0]), 0.0), MAX_WAIT)
        except ValueError:
            raise Invalid("wait: a number of seconds") from None
        if self.count >= self.limit:
            raise Invalid(f"this bottle has made its {self.limit} requests: ask the operator directly")
        req = Submitted(f"r-{secrets.token_hex(4)}", kind, name, reason)
        self._record(req)
        self.count += 1
        return req, wait

    def ask(self, host: str, port: int, why: str) -> Submitted:
        """Ask mode: a connection the policy refused becomes a request (one per destination while it is
        pending; counted against the same limit)."""
        label = f"{host}:{port}"
        held = self.asking.get(label)
        if held is not None and held.id not in self.decisions():
            return held
        if self.path is None:
            raise Invalid("this bottle takes no capability requests")
        name = parse_name("egress", label)
        if self.count >= self.limit:
            raise Invalid(f"this bottle has made its {self.limit} requests")
        req = Submitted(f"r-{secrets.token_hex(4)}", "egress", name, self.redact(f"ask mode: {why}"))
        self._record(req)
        self.count += 1
        self.asking[label] = req
        return req

    def _record(self, req: Submitted) -> None:
        assert self.path is not None  # noqa: S101 - submit refuses without a requests file
        line = json.dumps(
            {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "id": req.id,
                "kind": req.kind,
                "name": req.name,
                "reason": req.reason,
            },
            separators=(",", ":"),
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    async def answer(self, req: Submitted, wait: float, sleep: Callable[[float], object]) -> tuple[str, str]:
        """The operator's decision ("grant" | "deny", reason), or ("timeout", "") after `wait` seconds."""
        deadline = time.monotonic() + wait
        while True:
            got = self.decisions().get(req.id)
            if got is not None:
                return got
            if time.monotonic() >= deadline:
                return "timeout", ""
            await sleep(0.2)  # type: ignore[misc]
