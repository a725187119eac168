"""Which Claude Code goes into the agent image: "latest" is resolved to a version number (cached for a
while), so the image tag changes, and the image is rebuilt, when a newer Claude Code is published."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from pathlib import Path

from .state import bottle_home, write_private

__all__ = ["resolve_version", "seed_config"]

PACKAGE = "@anthropic-ai/claude-code"
TTL = 6 * 3600.0
VERSION_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")


def _cache() -> Path:
    return bottle_home() / "cache" / "claude-code-versions.json"


def resolve_version(requested: str, *, timeout: float = 3.0) -> str:
    """A concrete version for `requested` ("latest", "stable" or "X.Y.Z"). Offline, or when the registry
    does not answer, the last resolved value is used; with none, the tag itself (the image builds anyway)."""
    if VERSION_RE.match(requested):
        return requested
    cache = _cache()
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    entry = data.get(requested) or {}
    if entry.get("version") and time.time() - float(entry.get("at", 0)) < TTL:
        return str(entry["version"])
    if os.environ.get("CLAUDE_BOTTLE_OFFLINE"):
        return str(entry.get("version") or requested)
    # npm reads its registry from npm_config_registry (lower case, its own convention).
    registry = (os.environ.get("npm_config_registry") or "https://registry.npmjs.org").rstrip("/")  # noqa: SIM112
    url = f"{registry}/{PACKAGE}/{requested}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - https registry URL
            version = str(json.load(resp)["version"])
    except (OSError, ValueError, KeyError):
        return str(entry.get("version") or requested)
    if not VERSION_RE.match(version):
        return str(entry.get("version") or requested)
    data[requested] = {"version": version, "at": time.time()}
    cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(cache, json.dumps(data, indent=2) + "\n")
    return version


def seed_config(config_dir: Path, *, placeholder_key: str | None) -> None:
    """First-run answers for Claude Code (CLAUDE_CONFIG_DIR/.claude.json), so a new bottle starts straight
    into work: onboarding done, the bottle's workspace trusted, skip-permissions acknowledged, the
    placeholder key approved, no auto-updates. Claude Code's own file is never overwritten."""
    path = config_dir / ".claude.json"
    if path.exists():
        return
    config = {
        "hasCompletedOnboarding": True,
        "theme": "dark",
        "autoUpdates": False,
        "bypassPermissionsModeAccepted": True,
        "projects": {
            "/workspace": {"hasTrustDialogAccepted": True, "hasCompletedProjectOnboarding": True, "allowedTools": []}
        },
    }
    if placeholder_key:
        config["customApiKeyResponses"] = {"approved": [placeholder_key[-20:]], "rejected": []}
    write_private(path, json.dumps(config, indent=2) + "\n")
