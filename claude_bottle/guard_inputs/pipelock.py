"""Render a bottle's egress policy as pipelock's YAML (egress.engine = "pipelock").

pipelock (luckyPipewrench/pipelock) replaces our guard as the sidecar where the user has its image.
Its config is strict YAML; we emit JSON-quoted scalars, which YAML reads as double-quoted strings.
"""

from __future__ import annotations

import json
from typing import Any

from claude_bottle.guard.dlp import PATTERNS
from claude_bottle.manifest import BottleSpec

__all__ = ["pipelock_config", "to_yaml"]


def pipelock_config(bottle: BottleSpec, grants: list[Any] | None = None) -> dict[str, Any]:
    rules = [*bottle.egress.allow, *(grants or [])]
    config: dict[str, Any] = {
        "version": 1,
        "mode": "strict",
        "enforce": True,
        "api_allowlist": sorted({r.host for r in rules}),
        "forward_proxy": {"enabled": True, "sni_verification": True},
        "dlp": {
            "include_defaults": True,
            "patterns": [{"name": name, "regex": rx.pattern, "severity": "critical"} for name, rx in PATTERNS.items()],
        },
        "logging": {"format": "json", "output": "stdout", "include_allowed": True, "include_blocked": True},
        # Preset configs ship error reporting to the maintainer's Sentry: never from a bottle.
        "sentry": {"enabled": False},
    }
    if any(r.private for r in rules):
        # pipelock treats private ranges as SSRF targets; a rule with private = true needs them reachable.
        config["internal"] = []
    return config


def to_yaml(value: Any, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = []
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:\n{to_yaml(v, indent + 1)}")
            else:
                lines.append(f"{pad}{k}: {to_yaml(v)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]"
        lines = []
        for item in value:
            if isinstance(item, dict) and item:
                first, *rest = to_yaml(item, indent + 1).split("\n")
                lines.append(f"{pad}- {first.strip()}" + "".join(f"\n{line}" for line in rest))
            else:
                lines.append(f"{pad}- {to_yaml(item)}")
        return "\n".join(lines)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(str(value))
