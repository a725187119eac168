"""Egress policy: host patterns with ports, deny over allow, host spellings normalised before matching."""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Decision", "Policy", "PolicyFile", "Rule", "is_public_address", "normalise_host"]

DEFAULT_PORTS = (443, 80)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _legacy_ipv4(h: str) -> str | None:
    """Decimal, octal, hex and short IPv4 spellings ("2130706433", "0177.1") that resolvers accept."""
    if not h or any(c not in "0123456789abcdefx." for c in h) or not any(c.isdigit() for c in h):
        return None
    try:
        return socket.inet_ntoa(socket.inet_aton(h))
    except OSError:
        return None


def normalise_host(host: str) -> str:
    """Canonical spelling of a host name or IP literal: lower case, no trailing dot, IDNA, bare IPv6."""
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(h[1:-1]))
        except ValueError:
            return h  # brackets around anything but IPv6: matches no rule
    h = h.rstrip(".")
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        pass
    legacy = _legacy_ipv4(h)
    if legacy:
        return legacy
    if any(ord(c) > 127 for c in h):
        try:
            h = h.encode("idna").decode("ascii")
        except UnicodeError:
            return h  # not a valid IDNA name: it will match no rule
    return h


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_public_address(addr: str) -> bool:
    """False for private, loopback, link-local (metadata), multicast, reserved and unspecified."""
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv4 carried inside IPv6 (mapped, 6to4, Teredo, NAT64) is judged as the IPv4 it carries.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(str(embedded))
    return bool(ip.is_global) and not ip.is_multicast


@dataclass(frozen=True)
class Rule:
    host: str
    ports: tuple[int, ...] = DEFAULT_PORTS
    private: bool = False

    def matches(self, host: str, port: int) -> bool:
        if port not in self.ports:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host

    def matches_host(self, host: str) -> bool:
        return Rule(self.host, (0,)).matches(host, 0)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rule:
        return cls(
            normalise_host(str(d["host"])),
            tuple(int(p) for p in d.get("ports", DEFAULT_PORTS)),
            bool(d.get("private", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "ports": list(self.ports), "private": self.private}

    def label(self) -> str:
        return self.host if self.ports == DEFAULT_PORTS else f"{self.host}:{','.join(map(str, self.ports))}"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    rule: Rule | None = None


@dataclass(frozen=True)
class Policy:
    bottle: str = ""
    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    local_names: dict[str, str] = field(default_factory=dict)  # names the bottle's DNS answers
    # The operator's answers to capability requests: id -> (decision "grant" | "deny", reason).
    decisions: dict[str, tuple[str, str]] = field(default_factory=dict)
    ask_timeout: float = 0.0  # ask mode: seconds a refused connection waits for the operator (0: off)
    git_refs: tuple[str, ...] = ()  # pushes on a credential route: refs allowed beyond the bottle's own branch
    git_repos: tuple[str, ...] = ()  # ... and the repositories (owner/name) they may go to (empty: any)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Policy:
        return cls(
            bottle=str(d.get("bottle", "")),
            local_names={normalise_host(k): str(v) for k, v in d.get("local_names", {}).items()},
            allow=tuple(Rule.from_dict(r) for r in d.get("allow", ())),
            deny=tuple(Rule.from_dict(r) for r in d.get("deny", ())),
            decisions={
                str(k): (str(v[0]), str(v[1]))
                for k, v in d.get("decisions", {}).items()
                if isinstance(v, list) and len(v) == 2 and v[0] in ("grant", "deny")
            },
            ask_timeout=min(max(float(d.get("ask_timeout", 0) or 0), 0.0), 600.0),
            git_refs=tuple(str(x) for x in d.get("git_refs", ())),
            git_repos=tuple(str(x) for x in d.get("git_repos", ())),
        )

    def to_dict(self) -> dict[str, Any]:
        """The policy file's form: the one serialiser, read back by from_dict."""
        return {
            "version": 1,
            "bottle": self.bottle,
            "allow": [r.to_dict() for r in self.allow],
            "deny": [r.to_dict() for r in self.deny],
            "local_names": dict(self.local_names),
            **({"decisions": {k: list(v) for k, v in self.decisions.items()}} if self.decisions else {}),
            **({"ask_timeout": self.ask_timeout} if self.ask_timeout else {}),
            **({"git_refs": list(self.git_refs)} if self.git_refs else {}),
            **({"git_repos": list(self.git_repos)} if self.git_repos else {}),
        }

    def check(self, host: str, port: int) -> Decision:
        host = normalise_host(host)
        for rule in self.deny:
            if rule.matches_host(host) and (rule.ports == DEFAULT_PORTS or port in rule.ports):
                return Decision(False, f"denied by rule {rule.host}")
        for rule in self.allow:
            if rule.matches(host, port):
                return Decision(True, f"allowed by rule {rule.host}", rule)
        if any(r.matches_host(host) for r in self.allow):
            return Decision(False, f"port {port} not allowed for {host}")
        return Decision(False, "host not in allow list")


@dataclass
class PolicyFile:
    """The policy on disk, re-read when the file changes (so grants apply without a restart)."""

    path: Path
    check_every: float = 0.5
    _policy: Policy = field(default_factory=Policy)
    _stamp: tuple[int, int] | None = None
    _checked: float = 0.0

    def current(self) -> Policy:
        now = time.monotonic()
        if now - self._checked >= self.check_every or self._stamp is None:
            self._checked = now
            try:
                st = self.path.stat()
            except FileNotFoundError:
                return self._policy
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                try:
                    self._policy = Policy.from_dict(json.loads(self.path.read_text(encoding="utf-8")))
                    self._stamp = stamp
                except (ValueError, KeyError, TypeError):
                    pass  # a half-written file: keep the last good policy, fail closed on first load
        return self._policy
