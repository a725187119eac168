"""Render one bottle as a Compose project: the agent on an internal network, the guard as its way out."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...egress.proxy import HEALTH_PATH
from ...errors import BottleError
from ...manifest import AgentSpec, BottleSpec

__all__ = ["GUARD_PORT", "Identity", "RuntimeIds", "container_name", "project_name", "render_compose"]

GUARD_PORT = 3128
GUARD_URL = f"http://egress:{GUARD_PORT}"
AGENT_HOME = "/home/claude"
LABEL = "claude-bottle"


def project_name(slug: str) -> str:
    return f"claude-bottle-{slug}"


def container_name(slug: str, service: str) -> str:
    return f"{project_name(slug)}-{service}"


@dataclass(frozen=True)
class RuntimeIds:
    """Who the agent and guard run as. Never root: a root host user maps to fixed unprivileged ids."""

    agent_uid: int
    agent_gid: int
    guard_uid: int
    guard_gid: int

    @classmethod
    def for_host(cls) -> RuntimeIds:
        uid, gid = os.getuid(), os.getgid()
        if uid == 0:
            return cls(1000, 1000, 10001, 10001)
        # Same ids as the invoking user, so workspace files and state stay theirs.
        return cls(uid, gid, uid, gid)


@dataclass(frozen=True)
class Identity:
    slug: str
    owner_pid: int
    owner_started: float
    created: str

    def labels(self) -> dict[str, str]:
        return {
            f"{LABEL}.slug": self.slug,
            f"{LABEL}.backend": "docker",
            f"{LABEL}.owner-pid": str(self.owner_pid),
            f"{LABEL}.owner-started": f"{self.owner_started:.2f}",
            f"{LABEL}.created": self.created,
        }


def _mounts(bottle: BottleSpec, base: Path) -> list[dict[str, Any]]:
    out = []
    for m in bottle.mounts:
        src = (base / Path(m.host).expanduser()).resolve()
        if not src.exists():
            raise BottleError(f"mount source {src} does not exist: create it or fix bottles.*.mounts")
        out.append({"type": "bind", "source": str(src), "target": m.guest, "read_only": m.mode == "ro"})
    return out


def render_compose(
    *,
    identity: Identity,
    bottle: BottleSpec,
    agent: AgentSpec,
    workspace: Path,
    state_path: Path,
    manifest_dir: Path,
    agent_image: str,
    guard_image: str,
    ids: RuntimeIds,
) -> dict[str, Any]:
    del agent  # agent-level keys (prompt, model, ...) apply to the claude command, not to the box
    slug = identity.slug
    labels = identity.labels()
    internal = f"{project_name(slug)}-internal"
    res = bottle.resources
    proxy_env = {
        "HTTP_PROXY": GUARD_URL,
        "HTTPS_PROXY": GUARD_URL,
        "http_proxy": GUARD_URL,
        "https_proxy": GUARD_URL,
        "NO_PROXY": "localhost,127.0.0.1,::1,egress",
        "no_proxy": "localhost,127.0.0.1,::1,egress",
    }
    agent_env = {**bottle.env, **proxy_env, "CLAUDE_BOTTLE_SLUG": slug, "HOME": AGENT_HOME}
    hardening: dict[str, Any] = {
        "init": True,
        "stop_grace_period": "1s",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "labels": labels,
    }
    if bottle.egress.networks:
        outbound_nets = {n: {"name": n, "external": True} for n in bottle.egress.networks}
    else:
        outbound_nets = {"outbound": {"name": f"{project_name(slug)}-outbound", "labels": labels}}

    guard = {
        "image": guard_image,
        "container_name": container_name(slug, "egress"),
        "command": [
            "--policy",
            "/etc/claude-bottle/policy.json",
            "--audit",
            "/var/log/claude-bottle/egress.jsonl",
            "--listen",
            f"0.0.0.0:{GUARD_PORT}",
        ],
        "user": f"{ids.guard_uid}:{ids.guard_gid}",
        "read_only": True,
        "mem_limit": "256m",
        "pids_limit": 256,
        **hardening,
        "volumes": [
            {"type": "bind", "source": str(state_path / "guard"), "target": "/etc/claude-bottle", "read_only": True},
            {
                "type": "bind",
                "source": str(state_path / "egress.jsonl"),
                "target": "/var/log/claude-bottle/egress.jsonl",
            },
        ],
        "networks": {"internal": {"aliases": ["egress"]}, **{n: {} for n in outbound_nets}},
        "healthcheck": {
            "test": [
                "CMD",
                "python3",
                "-c",
                f"import urllib.request as u; u.urlopen('http://127.0.0.1:{GUARD_PORT}{HEALTH_PATH}', timeout=2)",
            ],
            "interval": "10s",
            "timeout": "3s",
            "retries": 3,
        },
    }
    agent_svc = {
        "image": agent_image,
        "container_name": container_name(slug, "agent"),
        "hostname": slug,
        "user": f"{ids.agent_uid}:{ids.agent_gid}",
        "environment": agent_env,
        "working_dir": "/workspace",
        "mem_limit": res.memory,
        "cpus": res.cpus,
        "pids_limit": res.pids,
        **hardening,
        "volumes": [
            {"type": "bind", "source": str(workspace), "target": "/workspace"},
            {"type": "bind", "source": str(state_path / "claude-home"), "target": f"{AGENT_HOME}/.claude"},
            *_mounts(bottle, manifest_dir),
        ],
        "networks": ["internal"],
        # Ordering only: the agent's entrypoint itself waits until the guard answers (50 ms polls),
        # which is faster than waiting on a healthcheck interval.
        "depends_on": {"egress": {"condition": "service_started"}},
    }
    return {
        "name": project_name(slug),
        "services": {"egress": guard, "agent": agent_svc},
        "networks": {
            "internal": {"name": internal, "internal": True, "labels": labels},
            **outbound_nets,
        },
    }
