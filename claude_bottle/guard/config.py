"""The guard's inputs on disk: policy.json (re-read on change) and secrets.json (credential routes, honeytokens)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from claude_bottle.guard.dlp import Scanner

__all__ = ["Route", "Secrets", "load_secrets"]


@dataclass(frozen=True)
class Route:
    """A credential route: /<name>/... inside the bottle -> upstream, with the real header added."""

    name: str
    upstream: str
    header: str
    value: str = field(repr=False)  # the header's value as sent upstream
    secret: str = field(default="", repr=False)  # the raw credential, for DLP

    @property
    def scheme(self) -> str:
        return urlsplit(self.upstream).scheme

    @property
    def host(self) -> str:
        return urlsplit(self.upstream).hostname or ""

    @property
    def port(self) -> int:
        u = urlsplit(self.upstream)
        return u.port or (443 if u.scheme == "https" else 80)

    @property
    def base_path(self) -> str:
        return urlsplit(self.upstream).path.rstrip("/")


@dataclass(frozen=True)
class Secrets:
    routes: dict[str, Route] = field(default_factory=dict)
    honeytokens: tuple[str, ...] = ()
    scanner: Scanner = field(default_factory=Scanner)

    def match(self, target: str) -> tuple[Route, str] | None:
        """The route for an origin-form target like /anthropic/v1/messages?x=1, and the rest of it."""
        name, _, rest = target[1:].partition("/")
        route = self.routes.get(name)
        return (route, "/" + rest) if route else None


def load_secrets(path: Path | None) -> Secrets:
    if path is None or not path.exists():
        return Secrets()
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    routes = {
        name: Route(name, str(r["upstream"]), str(r["header"]), str(r["value"]), str(r.get("secret", r["value"])))
        for name, r in data.get("routes", {}).items()
    }
    honey = tuple(str(t) for t in data.get("honeytokens", ()))
    return Secrets(routes, honey, Scanner(secrets=[r.secret for r in routes.values()], honeytokens=honey))
