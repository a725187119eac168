"""DLP: secret patterns, the bottle's real credential values (also encoded) and planted honeytokens."""

from __future__ import annotations

import base64
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote

__all__ = ["Hit", "Scanner", "encodings"]

PATTERNS: dict[str, re.Pattern[str]] = {
    "anthropic-key": re.compile(r"sk-ant-[A-Za-z0-9_-]{20,}"),
    "aws-access-key": re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])"),
    "github-token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})"),
    "slack-token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "private-key": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"),
    "npm-token": re.compile(r"\bnpm_[A-Za-z0-9]{36}\b"),
}
PATTERNS_CI = {name: re.compile(rx.pattern, re.IGNORECASE) for name, rx in PATTERNS.items()}
MIN_SECRET = 8  # shorter "secrets" would match everywhere


def encodings(secret: str) -> set[str]:
    """The secret as it may travel: plain, URL-quoted, hex, and base64 at every byte alignment."""
    raw = secret.encode()
    out = {secret, quote(secret, safe=""), raw.hex(), raw.hex().upper()}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for pad in range(3):
            enc = encode(b"\0" * pad + raw).decode().rstrip("=")
            # Drop characters that depend on the unknown neighbouring bytes.
            start = math.ceil(pad * 4 / 3)
            end = len(enc) - (1 if (pad + len(raw)) % 3 else 0)
            core = enc[start:end]
            if len(core) >= MIN_SECRET:
                out.add(core)
    return {e for e in out if len(e) >= MIN_SECRET}


def entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(c / len(text) * math.log2(c / len(text)) for c in counts.values())


@dataclass(frozen=True)
class Hit:
    pattern: str
    start: int
    end: int

    @property
    def reason(self) -> str:
        return f"dlp:{self.pattern}"


@dataclass
class Scanner:
    secrets: Iterable[str] = ()
    honeytokens: Iterable[str] = ()
    _literal: dict[str, str] = field(default_factory=dict)
    _lower: dict[str, str] = field(default_factory=dict)
    _regex: re.Pattern[str] | None = None
    _regex_ci: re.Pattern[str] | None = None

    def __post_init__(self) -> None:
        for s in self.secrets:
            if len(s) >= MIN_SECRET:
                self._literal.update(dict.fromkeys(encodings(s), "credential"))
        for t in self.honeytokens:
            if len(t) >= MIN_SECRET:
                self._literal.update(dict.fromkeys(encodings(t), "honeytoken"))
        if self._literal:
            alts = "|".join(re.escape(a) for a in sorted(self._literal, key=len, reverse=True))
            self._regex = re.compile(alts)
            self._regex_ci = re.compile(alts, re.IGNORECASE)
            self._lower = {k.lower(): v for k, v in self._literal.items()}

    def find(self, text: str, *, ignore_case: bool = False) -> Hit | None:
        regex = self._regex_ci if ignore_case else self._regex
        if regex is not None:
            m = regex.search(text)
            if m:
                kind = self._lower[m.group(0).lower()] if ignore_case else self._literal[m.group(0)]
                return Hit(kind, m.start(), m.end())
        for name, rx in (PATTERNS_CI if ignore_case else PATTERNS).items():
            m = rx.search(text)
            if m:
                return Hit(name, m.start(), m.end())
        return None

    def find_bytes(self, data: bytes) -> Hit | None:
        return self.find(data.decode("latin-1"))

    def find_host(self, host: str) -> Hit | None:
        """Secrets in a host name (names are case-blind), and labels shaped like encoded data (DNS tunnels)."""
        hit = self.find(host, ignore_case=True)
        if hit:
            return hit
        pos = 0
        for label in host.split("."):
            if is_tunnel_label(label):
                return Hit("encoded-hostname", pos, pos + len(label))
            pos += len(label) + 1
        return None

    def redact(self, text: str) -> str:
        """Text with every secret replaced, for the audit log: a secret never lands on disk. One pass per
        pattern, so there is no count after which the rest goes through; the record around it stays."""
        if self._regex_ci is not None:
            text = self._regex_ci.sub(lambda m: f"[REDACTED:{self._lower[m.group(0).lower()]}]", text)
        for name, rx in PATTERNS_CI.items():
            text = rx.sub(f"[REDACTED:{name}]", text)
        return text

    def redact_host(self, host: str) -> str:
        """A host name for the log: secrets redacted, and each label shaped like encoded data (a DNS
        tunnel) replaced on its own; the other labels stay readable."""
        host = self.redact(host)
        return ".".join("[REDACTED:encoded-hostname]" if is_tunnel_label(x) else x for x in host.split("."))


def is_tunnel_label(label: str) -> bool:
    """A long, high-entropy DNS label: how data is smuggled out in names (base32/base64/hex chunks)."""
    if len(label) < 24:
        return False
    if re.fullmatch(r"[0-9a-f]{32,}", label):
        return True
    return entropy(label) >= 3.8 and sum(c.isdigit() for c in label) >= 2
