"""Published ports of a Docker bottle: one inbound relay container per bottle (guard/inbound.py).

The agent lives on an internal network, which the engine cannot publish, behind a firewall that lets
nothing in. The relay is the one thing that reaches it from outside: the guard's image and uid, no
capability, read-only, on the bottle's outbound network (where the engine publishes `127.0.0.1:HOST` to
it) and on the internal network at the address the firewall accepts new connections from
(`NetPlan.inbound_ip`; the agent may answer them, never open one to it). It writes each connection to
the bottle's egress log. The set of ports changes by replacing the relay (its open connections end).

`stop` removes it before the bottle's networks (a mark in the state dir says one may exist: Compose does
not take it, orphan or not); it carries the bottle's identity labels, so `cleanup` finds one left behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from claude_bottle import engine
from claude_bottle.backend import PublishedPort
from claude_bottle.backend.docker.compose import LOG_MAX_SIZE, NetPlan, container_name
from claude_bottle.bottle.state import StateDir, write_private
from claude_bottle.errors import BottleError

SERVICE = "ports"
# "GUEST=ADDRESS:HOST ..." on the relay: what `ls` and `port` show (no comma: `docker ps` joins labels with them)
PORTS_LABEL = "claude-bottle.ports"
AUDIT_TARGET = "/var/log/claude-bottle/egress.jsonl"
MARK_FILE = "ports.txt"  # in the state dir while a relay may exist: `stop` removes it before the networks
READY_TIMEOUT = 15.0


def encode(ports: Sequence[PublishedPort]) -> str:
    return " ".join(f"{p.guest}={p.address}:{p.host}" for p in ports)


def decode(text: str) -> list[PublishedPort]:
    """The relay's label read back; an odd part is left out (a label is outside input)."""
    out = []
    for part in (text or "").split():
        guest, _, where = part.partition("=")
        address, _, host = where.rpartition(":")
        if guest.isdigit() and host.isdigit() and address:
            out.append(PublishedPort(int(guest), int(host), address))
    return out


def check_free(ports: Sequence[PublishedPort], *, taken_by_us: Sequence[PublishedPort] = ()) -> None:
    """One line naming the fix when a host port is already taken here (before any engine work)."""
    ours = {(p.address, p.host) for p in taken_by_us}
    for p in ports:
        if (p.address, p.host) in ours:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # As the engine's listener binds (SO_REUSEADDR): a port taken is one something listens on, not
            # one a connection closed a moment ago still waits on.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((p.address, p.host))
            except OSError as exc:
                why = "taken" if exc.errno == errno.EADDRINUSE else exc.strerror
                raise BottleError(
                    f"port {p.host} on {p.address} is {why} on this host: publish the agent's port {p.guest} "
                    f"elsewhere (claude-bottle port SLUG {p.guest} --host N, or ports = "
                    f"[{{ guest = {p.guest}, host = N }}] in the manifest)"
                ) from None


class Project:
    """What the relay needs of the bottle's rendered project (compose.json in its state dir)."""

    def __init__(self, state: StateDir, compose_file: str) -> None:
        try:
            doc: dict[str, Any] = json.loads((state.path / compose_file).read_text(encoding="utf-8"))
            services, networks = doc["services"], doc["networks"]
            guard, net = services["egress"], services["net"]
            self.subnet = str(networks["internal"]["ipam"]["config"][0]["subnet"])
            self.internal = str(networks["internal"]["name"])
            outbound = [k for k in guard["networks"] if k != "internal"]
            self.outbound = str(networks[outbound[0]]["name"])
            self.image, self.user = str(guard["image"]), str(guard["user"])
            self.labels: dict[str, str] = {str(k): str(v) for k, v in guard.get("labels", {}).items()}
            inbound = str((net.get("environment") or {}).get("BOTTLE_INBOUND") or "")
            audit = [v for v in guard.get("volumes", []) if isinstance(v, dict) and v.get("target") == AUDIT_TARGET]
            command = guard.get("command", [])
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise BottleError(f"{state.slug}: its project is unreadable ({exc!r}): stop and resume it") from None
        if "--policy" not in command:
            raise BottleError(f'{state.slug}: ports need the built-in guard (egress.engine = "guard"), not pipelock')
        if not audit:
            raise BottleError(f"{state.slug}: runs on a remote engine, whose loopback is not this machine's: "
                              "reach its ports with ssh -L")  # fmt: skip
        self.audit, self.inbound = Path(audit[0]["source"]), inbound
        if self.inbound != NetPlan(self.subnet).inbound_ip:
            raise BottleError(
                f"{state.slug} was started before ports existed (its firewall lets nothing in): "
                f"`claude-bottle stop {state.slug}` then `claude-bottle resume {state.slug}`, and publish again"
            )


def published(slug: str) -> list[PublishedPort]:
    name = container_name(slug, SERVICE)
    rows = [r for r in engine.ps_rows(f"name={name}") if r.name == name]
    return decode(rows[0].labels.get(PORTS_LABEL, "")) if rows else []


def publish(state: StateDir, ports: Sequence[PublishedPort], *, compose_file: str) -> None:
    """Replace the bottle's relay by one for exactly `ports` (none: no relay)."""
    project = Project(state, compose_file)
    name = container_name(state.slug, SERVICE)
    check_free(ports, taken_by_us=published(state.slug))
    remove(state)
    if not ports:
        return
    write_private(state.path / MARK_FILE, encode(ports) + "\n")
    agent = _agent_address(state.slug, project.internal)
    # The bottle's identity labels, not Compose's: Compose would not remove it anyway, and to `cleanup` it
    # is then a container of the bottle's to remove before the bottle's networks.
    labels = {**project.labels, PORTS_LABEL: encode(ports)}
    argv = [
        "create", "--name", name,
        *[a for k, v in labels.items() for a in ("--label", f"{k}={v}")],
        "--user", project.user, "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
        "--init", "--memory", "64m", "--pids-limit", "64", "--restart", "on-failure",
        "--log-driver", "json-file", "--log-opt", f"max-size={LOG_MAX_SIZE}", "--log-opt", "max-file=2",
        "--sysctl", "net.ipv4.ip_unprivileged_port_start=0",
        "--network", project.outbound,
        *[a for p in ports for a in ("--publish", f"{p.address}:{p.host}:{p.guest}/tcp")],
        "--mount", f"type=bind,source={project.audit},target={AUDIT_TARGET}",
        "--entrypoint", "python3", project.image,
        "-m", "claude_bottle.guard.inbound", "--agent", agent, "--bottle", state.slug, "--audit", AUDIT_TARGET,
        *[a for p in ports for a in ("--port", f"{p.guest}={p.address}:{p.host}")],
    ]  # fmt: skip
    before = _size(project.audit)
    try:
        engine.check(engine.docker(*argv, timeout=60), "creating the bottle's inbound relay")
        engine.check(
            engine.docker("network", "connect", "--ip", project.inbound, project.internal, name, timeout=60),
            "joining the inbound relay to the bottle's network",
        )
        started = engine.docker("start", name, timeout=60)
        if not started.ok:
            tail = (started.stderr.strip().splitlines() or ["?"])[-1]
            if "already allocated" in tail or "address already in use" in tail:
                raise BottleError(f"a host port is taken ({tail}): publish the agent's port elsewhere (--host N)")
            engine.check(started, "starting the inbound relay")
        deadline = time.monotonic() + READY_TIMEOUT
        while not _listens(project.audit, since=before):
            if time.monotonic() > deadline:
                raise BottleError(f"the inbound relay did not listen within {READY_TIMEOUT:.0f}s (docker logs {name})")
            time.sleep(0.05)
    except BaseException:
        with contextlib.suppress(Exception):
            engine.docker("rm", "-f", name, timeout=60)
        raise


def remove(state: StateDir) -> None:
    """The bottle's relay, if it has one (Compose does not take a container it did not make with it, and
    the bottle's networks cannot go while the relay is on them)."""
    mark = state.path / MARK_FILE
    if mark.exists():
        engine.check(engine.docker("rm", "-f", container_name(state.slug, SERVICE), timeout=60), "removing the relay")
        mark.unlink(missing_ok=True)


def _agent_address(slug: str, internal: str) -> str:
    """The agent's address on the internal network (the net container's, whose namespace it shares)."""
    fmt = "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}"
    r = engine.docker("inspect", "--format", fmt, container_name(slug, "net"), timeout=30)
    found = dict(part.partition("=")[::2] for part in r.stdout.split()) if r.ok else {}
    if not found.get(internal):
        raise BottleError(f"{slug} is not running (its network holder has no address): resume it first")
    return found[internal]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _listens(audit: Path, *, since: int) -> bool:
    """Has a relay said it listens in the bottle's log since offset `since` (the relay's readiness)?"""
    try:
        with audit.open("rb") as f:
            f.seek(since)
            return b'"kind":"inbound-listen"' in f.read(1024 * 1024)
    except OSError:
        return False
