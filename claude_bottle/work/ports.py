"""The agent's published ports on a running bottle (`claude-bottle port`): what is published, one more, one
fewer. The backend replaces the whole set at once (docker/ports.py: one relay per bottle)."""

from __future__ import annotations

from claude_bottle.backend import BottleBackend, PublishedPort, get_bottle_backend
from claude_bottle.bottle.state import StateDir
from claude_bottle.errors import BottleError

LOOPBACK = "127.0.0.1"
EVERY_INTERFACE = "0.0.0.0"  # noqa: S104 - only when the operator asks for it by name (--every-interface)


def _running(state: StateDir) -> BottleBackend:
    record = state.read()
    backend = get_bottle_backend(record.backend)
    if not backend.publishes_ports:
        raise BottleError(f"{state.slug}: the {backend.name} backend cannot publish an agent's ports")
    live = backend.statuses().get(state.slug)
    if record.status != "running" or live is None or live.status != "running":
        raise BottleError(f"{state.slug} is not running: `claude-bottle resume {state.slug}` first")
    return backend


def published(state: StateDir) -> list[PublishedPort]:
    state.read()  # a clear error for a dir that is not a bottle
    return get_bottle_backend(state.read().backend).published_ports(state=state)


def publish(state: StateDir, guest: int, *, host: int | None = None, address: str = LOOPBACK) -> list[PublishedPort]:
    """Publish the agent's port `guest` at `address:host` (host: the same number), replacing an earlier
    publication of the same guest port; returns the new set."""
    for n in (guest, host or guest):
        if not 0 < n < 65536:
            raise BottleError(f"{n} is not a port number (1-65535)")
    with state.lock():
        backend = _running(state)
        current = backend.published_ports(state=state)
        wanted = PublishedPort(guest, host or guest, address)
        clash = [p for p in current if p.guest != guest and (p.address, p.host) == (wanted.address, wanted.host)]
        if clash:
            raise BottleError(
                f"{address}:{wanted.host} already carries the agent's port {clash[0].guest}: pick --host N"
            )
        ports = sorted([*(p for p in current if p.guest != guest), wanted], key=lambda p: p.guest)
        backend.publish_ports(state=state, ports=ports)
        return ports


def close(state: StateDir, guest: int) -> list[PublishedPort]:
    with state.lock():
        backend = _running(state)
        current = backend.published_ports(state=state)
        if all(p.guest != guest for p in current):
            raise BottleError(f"{state.slug} does not publish port {guest} (claude-bottle port {state.slug})")
        ports = [p for p in current if p.guest != guest]
        backend.publish_ports(state=state, ports=ports)
        return ports
