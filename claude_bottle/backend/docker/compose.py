"""Render one bottle as a Compose project: the agent on an internal network, the guard as its way out."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_bottle.guard import HEALTH_PATH
from claude_bottle.identity import AGENT_HOME

if TYPE_CHECKING:
    from claude_bottle.guard_inputs.inputs import GuardInputs
    from claude_bottle.identity import Identity, RuntimeIds
    from claude_bottle.manifest import BottleSpec

__all__ = ["NetPlan", "container_name", "project_name", "render_compose", "verified_binds", "volume_name"]

GUARD_CPUS = 1.0
LOG_MAX_SIZE = "10m"


def project_name(slug: str) -> str:
    """`<namespace>-<slug>`: the Compose project, and the prefix of every container and network in it."""
    from claude_bottle.identity import namespace

    return f"{namespace()}-{slug}"


def container_name(slug: str, service: str) -> str:
    return f"{project_name(slug)}-{service}"


def volume_name(slug: str, part: str) -> str:
    """A remote bottle's volume (remote.py): `<project>-<part>`."""
    return f"{project_name(slug)}-{part}"


def _guarded_files(workspace: Path, manifest_file: Path | None, protected: Sequence[str]) -> list[dict[str, Any]]:
    """Workspace files the agent must not change, mounted read-only over themselves: the repository's
    control paths (`protected`, from gitguard: code or configuration written there would run on the host
    the next time the operator uses git) and the manifest (it says what the next bottle may mount and
    reach). `.git` itself is bound too, so it is a mount point the agent cannot rename away."""
    out: list[dict[str, Any]] = []
    git = workspace / ".git"
    if git.is_dir() and not git.is_symlink():
        out.append({"type": "bind", "source": str(git), "target": "/workspace/.git"})
    out += [
        {"type": "bind", "source": str(workspace / rel), "target": f"/workspace/{rel}", "read_only": True}
        for rel in protected
    ]
    if manifest_file is not None and manifest_file.is_file() and workspace in manifest_file.parents:
        rel = manifest_file.relative_to(workspace)
        out.append({"type": "bind", "source": str(manifest_file), "target": f"/workspace/{rel}", "read_only": True})
    return out


def _mounts(mounts: Sequence[tuple[Path, str, bool]]) -> list[dict[str, Any]]:
    """The manifest's mounts, from their checked, resolved sources (paths.check_bottle_paths)."""
    return [{"type": "bind", "source": str(src), "target": guest, "read_only": ro} for src, guest, ro in mounts]


def verified_binds(agent: dict[str, Any], state_path: Path) -> list[dict[str, Any]]:
    """The agent's binds whose source lies outside the state dir: places an agent may reach on the host, so
    what the engine mounted there is compared with what was checked (run/agent/mounts)."""
    return [v for v in agent["volumes"] if v["type"] == "bind" and state_path not in Path(v["source"]).parents]


@dataclass(frozen=True)
class NetPlan:
    """The internal network's subnet, fixed so the guard has a known address to be the agent's DNS."""

    subnet: str

    @property
    def guard_ip(self) -> str:
        # The last usable address: Docker hands out the others from the bottom (.1 is the bridge's gateway),
        # so a container started first can never take the guard's address.
        return str(ipaddress.ip_network(self.subnet)[-2])

    @property
    def inbound_ip(self) -> str:
        """The inbound relay's address (published ports, guard/inbound.py): the one below the guard's. The
        bottle's firewall lets connections in from it, never out to it."""
        return str(ipaddress.ip_network(self.subnet)[-3])

    @property
    def clients(self) -> str:
        """The addresses Docker hands the bottle's containers, and the guard's own (its healthcheck): the
        subnet without its gateway (the host's side of the bridge) and without the inbound relay's address
        (it never needs the guard), as CIDRs for the guard's --clients."""
        net = ipaddress.ip_network(self.subnet)
        ranges = [*ipaddress.summarize_address_range(net[2], net[-4]), ipaddress.ip_network(f"{net[-2]}/32")]
        return ",".join(str(n) for n in ranges)


PIPELOCK_IMAGE = "ghcr.io/luckypipewrench/pipelock"


@dataclass(frozen=True)
class _Project:
    """What every part of one rendered project shares: who it is, where it runs, how its places are made."""

    identity: Identity
    state_path: Path
    remote: bool
    net: NetPlan
    guard: GuardInputs

    @property
    def slug(self) -> str:
        return self.identity.slug

    @property
    def pipelock(self) -> bool:
        return self.guard.engine == "pipelock"

    def place(self, part: str, local: Path, target: str, *, read_only: bool = False) -> dict[str, Any]:
        """A place a container needs: a bind of this machine's path, or on a remote engine a volume."""
        kind, source = ("volume", volume_name(self.slug, part)) if self.remote else ("bind", str(local))
        return {"type": kind, "source": source, "target": target, **({"read_only": True} if read_only else {})}

    def run_mount(self) -> dict[str, Any]:
        # Shared with the net container (which marks the firewall applied) and the guard (which marks itself
        # listening): the CLI sees both marks on the host without a `docker exec`.
        return self.place("run", self.state_path / "run", "/bottle-run")

    def hardening(self) -> dict[str, Any]:
        return {
            "init": True,
            "stop_grace_period": "1s",
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "labels": self.identity.labels(),
            # Whatever a container writes to its stdout (the agent can reach /proc/1/fd/1) is bounded on disk.
            "logging": {"driver": "json-file", "options": {"max-size": LOG_MAX_SIZE, "max-file": "2"}},
        }


def render_compose(
    *,
    identity: Identity,
    bottle: BottleSpec,
    workspace: Path,
    state_path: Path,
    agent_image: str,
    mounts: Sequence[tuple[Path, str, bool]] = (),
    guard_image: str,
    ids: RuntimeIds,
    net: NetPlan,
    guard: GuardInputs,
    manifest_file: Path | None = None,
    protected: Sequence[str] = (),
    remote: bool = False,
    runtime: str | None = None,
) -> dict[str, Any]:
    """The project: the guard, the net container that fences the agent's namespace in, and the agent.
    `remote`: the engine does not see this machine's files, so every place is one of the bottle's volumes
    (remote.py fills them) and the honeytokens are copied in by Compose (configs). `runtime`: the engine
    runtime the agent alone runs under (gVisor's); the guard and the net container stay on runc."""
    pj = _Project(identity, state_path, remote, net, guard)
    labels = identity.labels()
    if bottle.egress.networks:
        outbound_nets = {n: {"name": n, "external": True} for n in bottle.egress.networks}
    else:
        outbound_nets = {"outbound": {"name": f"{project_name(pj.slug)}-outbound", "labels": labels}}
    guard_svc = _guard_service(pj, guard_image, ids, outbound_nets)
    net_svc = _net_service(pj, agent_image)
    agent_svc = _agent_service(pj, bottle, agent_image, ids, workspace, mounts, manifest_file, protected)
    if runtime is not None:
        agent_svc["runtime"] = runtime
        # gVisor reports device and inode numbers of its own at a mount point, so the agent cannot say what
        # the engine mounted; the backend refuses a bind an agent could swap instead (docs/design/isolation.md).
        agent_svc["environment"]["BOTTLE_VERIFY"] = ""
    extra = _remote_parts(pj, guard_svc, net_svc, agent_svc) if remote else {}
    return {
        **extra,
        "name": project_name(pj.slug),
        "services": {"egress": guard_svc, "net": net_svc, "agent": agent_svc},
        "networks": {
            "internal": {
                "name": f"{project_name(pj.slug)}-internal",
                "internal": True,
                "labels": labels,
                "ipam": {"config": [{"subnet": net.subnet}]},
            },
            **outbound_nets,
        },
    }


def _guard_service(pj: _Project, guard_image: str, ids: RuntimeIds, outbound: dict[str, Any]) -> dict[str, Any]:
    """The guard: on the bottle's internal address (alias `egress`) and its outbound networks, unprivileged,
    read-only, with a CPU share of its own, restarted if it dies."""
    net, guard = pj.net, pj.guard
    common = {
        "container_name": container_name(pj.slug, "egress"),
        "user": f"{ids.guard_uid}:{ids.guard_gid}",
        "read_only": True,
        "mem_limit": "512m",
        # A CPU share of its own: the agent's load (or a connection it feeds) cannot starve the guard's loop.
        "cpus": GUARD_CPUS,
        "pids_limit": 256,
        # Killed (out of memory, a crash), it comes back: meanwhile the agent is fenced in with nowhere to go.
        "restart": "on-failure",
        **pj.hardening(),
        "networks": {"internal": {"aliases": ["egress"], "ipv4_address": net.guard_ip}, **{n: {} for n in outbound}},
    }
    if pj.pipelock:
        return {
            "image": PIPELOCK_IMAGE,
            "command": ["run", "--listen", f"{net.guard_ip}:{guard.port}", "--config", "/etc/pipelock/pipelock.yaml"],
            **common,
            "volumes": [pj.place("guard", guard.dir, "/etc/pipelock", read_only=True)],
        }
    # The bottle's internal address only, and only for clients on that network: a neighbour on the outbound
    # side (egress.networks) can never use the credential routes.
    command = guard.argv(listen=f"{net.guard_ip}:{guard.port}", clients=net.clients, guard_ip=net.guard_ip)
    guard_self = f"http://{net.guard_ip}:{guard.port}"
    if pj.remote:
        logs = [pj.place("log", Path(), "/var/log/claude-bottle")]
    else:
        logs = [
            {"type": "bind", "source": str(guard.audit), "target": "/var/log/claude-bottle/egress.jsonl"},
            {"type": "bind", "source": str(guard.requests), "target": "/var/log/claude-bottle/requests.jsonl"},
        ]
    return {
        "image": guard_image,
        "command": command,
        **common,
        # The guard answers DNS on port 53 without any capability: lower the unprivileged port floor inside its
        # own network namespace only.
        "sysctls": {"net.ipv4.ip_unprivileged_port_start": 0},
        "volumes": [pj.place("guard", guard.dir, "/etc/claude-bottle", read_only=True), *logs, pj.run_mount()],
        "healthcheck": {
            "test": [
                "CMD",
                "python3",
                "-c",
                f"import urllib.request as u; u.urlopen('{guard_self}{HEALTH_PATH}', timeout=2)",
            ],
            "interval": "10s",
            "timeout": "3s",
            "retries": 3,
        },
    }


def _net_service(pj: _Project, agent_image: str) -> dict[str, Any]:
    """The network namespace holder: it firewalls the namespace so only the guard is reachable, then idles as
    nobody; the agent joins its namespace."""
    net = pj.net
    svc: dict[str, Any] = {
        "image": agent_image,
        "container_name": container_name(pj.slug, "net"),
        "hostname": pj.slug,
        "user": "0:0",
        "entrypoint": ["/usr/local/sbin/bottle-firewall"],
        "command": [net.guard_ip, str(pj.guard.port), *([] if pj.pipelock else ["53"])],
        **pj.hardening(),
        "init": False,  # no root init left behind: PID 1 becomes the capability-less idler
        "cap_add": ["NET_ADMIN", "SETUID", "SETGID", "SETPCAP"],
        "mem_limit": "32m",
        "pids_limit": 16,
        "volumes": [pj.run_mount()],
        "networks": {"internal": {}},
        "environment": {"BOTTLE_INBOUND": net.inbound_ip},
    }
    if not pj.pipelock:
        # Docker's resolver in the bottle answers container names and forwards the rest to the guard, which
        # answers NXDOMAIN: outside names never reach an outside resolver.
        svc["dns"] = [net.guard_ip]
    return svc


def _agent_service(
    pj: _Project,
    bottle: BottleSpec,
    agent_image: str,
    ids: RuntimeIds,
    workspace: Path,
    mounts: Sequence[tuple[Path, str, bool]],
    manifest_file: Path | None,
    protected: Sequence[str],
) -> dict[str, Any]:
    """The agent: in the net container's namespace, as its uid, without capabilities, with its workspace,
    ~/.claude, the honeytokens, the manifest's mounts and the run marks (read-only but for its own)."""
    guard, res, remote = pj.guard, bottle.resources, pj.remote
    env = guard.agent_environment(bottle.env, slug=pj.slug)
    if pj.pipelock:
        env["BOTTLE_GUARD_HEALTH"] = f"{guard.guard_url}/health"
    volumes: list[dict[str, Any]] = [
        pj.place("workspace", workspace, "/workspace"),
        pj.place("home", pj.state_path / "claude-home", f"{AGENT_HOME}/.claude"),
    ]
    if not remote:
        volumes += [
            {"type": "bind", "source": str(src), "target": f"{AGENT_HOME}/{name}", "read_only": True}
            for name, src in guard.honey.items()
        ]
        # (Remote: the agent's copy of the workspace is not the operator's; what comes home is checked.)
        volumes += _guarded_files(workspace, manifest_file, protected)
        volumes += _mounts(mounts)
    else:
        volumes += [pj.place(f"mount{i}", Path(), guest, read_only=True) for i, (_s, guest, _ro) in enumerate(mounts)]
    volumes.append({**pj.run_mount(), "read_only": True})
    if not remote:
        # The one place the agent's entrypoint writes, before anything of the agent runs: what the engine
        # mounted (device and inode at each mount point), for the CLI to check. Remote: nothing to check.
        volumes.append({"type": "bind", "source": str(pj.state_path / "run" / "agent"), "target": "/bottle-run/agent"})
    svc: dict[str, Any] = {
        "image": agent_image,
        "container_name": container_name(pj.slug, "agent"),
        "network_mode": "service:net",
        "user": f"{ids.agent_uid}:{ids.agent_gid}",
        "environment": env,
        "working_dir": "/workspace",
        "mem_limit": res.memory,
        "cpus": res.cpus,
        "pids_limit": res.pids,
        **pj.hardening(),
        "volumes": volumes,
        # Ordering only: the agent's entrypoint itself waits until the firewall is in place and the guard
        # answers (50 ms polls), which is faster than waiting on a healthcheck interval.
        "depends_on": {"egress": {"condition": "service_started"}, "net": {"condition": "service_started"}},
    }
    env["BOTTLE_VERIFY"] = "\n".join(v["target"] for v in verified_binds(svc, pj.state_path))
    return svc


def _remote_parts(pj: _Project, *services: dict[str, Any]) -> dict[str, Any]:
    """On a remote engine: the bottle's volumes (external: remote.py made and filled them), and the
    honeytokens as Compose configs (copied in through the engine API; root's and read-only, as local binds)."""
    guard, agent = pj.guard, services[-1]
    parts = {v["source"] for svc in services for v in svc["volumes"]}
    agent["configs"] = [
        {"source": f"honey{i}", "target": f"{AGENT_HOME}/{name}", "mode": 0o444}
        for i, name in enumerate(sorted(guard.honey))
    ]
    return {
        "volumes": {name: {"name": name, "external": True} for name in sorted(parts)},
        "configs": {
            f"honey{i}": {"content": guard.honey[name].read_text(encoding="utf-8")}
            for i, name in enumerate(sorted(guard.honey))
        },
    }
