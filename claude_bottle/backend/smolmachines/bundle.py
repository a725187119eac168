"""The sidecar bundle of a smolmachines bottle, on Docker: the guard in a container
`<namespace>-sidecars-<slug>` on a network `<namespace>-bundle-<slug>`, published on a host loopback address
of its own (one 127.x.y.z per bottle) and nowhere else. The VM's network is scoped to that one address.

The guard is the same image, files and audit log as on the Docker backend; only the way in differs: it
admits one client, the bundle network's gateway, which is where Docker's port publishing delivers
connections made to the loopback address (the VM's, through the VMM's TSI, and the operator's own).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from claude_bottle import engine
from claude_bottle.errors import BackendError
from claude_bottle.identity import namespace

if TYPE_CHECKING:
    from claude_bottle.guard_inputs.inputs import GuardInputs
    from claude_bottle.identity import RuntimeIds

__all__ = ["ADDRESS_LABEL", "Bundle", "bundle_names", "pick_address"]

ADDRESS_LABEL = "claude-bottle.guard-address"
ROLE_LABEL = "claude-bottle.role"
DEFAULT_ADDRESS_POOL = "127.77.0.0/16"
ATTEMPTS = 6


@dataclass(frozen=True)
class BundleNames:
    machine: str
    container: str
    network: str


def bundle_names(slug: str) -> BundleNames:
    ns = namespace()
    return BundleNames(f"{ns}-{slug}", f"{ns}-sidecars-{slug}", f"{ns}-bundle-{slug}")


def pick_address(taken: set[str], port: int) -> str:
    """A host loopback address no bottle uses and nothing listens on at `port`, from
    CLAUDE_BOTTLE_LOOPBACK_POOL (default 127.77.0.0/16). Linux answers on all of 127.0.0.0/8 unconfigured."""
    pool = ipaddress.ip_network(os.environ.get("CLAUDE_BOTTLE_LOOPBACK_POOL") or DEFAULT_ADDRESS_POOL)
    if not isinstance(pool, ipaddress.IPv4Network) or not pool.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")):
        raise BackendError(f"CLAUDE_BOTTLE_LOOPBACK_POOL={pool} is not inside 127.0.0.0/8: name a loopback range")
    hosts = pool.num_addresses - 2
    for _ in range(64):
        addr = str(pool[1 + secrets.randbelow(max(hosts, 1))])
        if addr in taken or addr == "127.0.0.1":
            continue
        with socket.socket() as s:
            try:
                s.bind((addr, port))
            except OSError:
                continue
        return addr
    raise BackendError(f"no free loopback address left in {pool}: set CLAUDE_BOTTLE_LOOPBACK_POOL to a wider range")


def addresses_in_use() -> set[str]:
    rows = engine.ps_rows(f"label={ADDRESS_LABEL}")
    return {r.labels[ADDRESS_LABEL] for r in rows if r.labels.get(ADDRESS_LABEL)}


@dataclass(frozen=True)
class Bundle:
    """One bottle's sidecars: where its guard answers."""

    slug: str
    address: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def guard_argv(self, guard: GuardInputs, gateway: str) -> list[str]:
        # Published connections arrive from the bundle network's gateway: that is the only client.
        return guard.argv(listen=f"0.0.0.0:{self.port}", clients=f"{gateway}/32")

    def run_argv(
        self, *, guard: GuardInputs, image: str, ids: RuntimeIds, labels: Mapping[str, str], run_dir: Path, gateway: str
    ) -> list[str]:
        names = bundle_names(self.slug)
        argv = ["run", "-d", "--name", names.container, "--network", names.network]
        for k, v in {**labels, ROLE_LABEL: "sidecars", ADDRESS_LABEL: self.address}.items():
            argv += ["--label", f"{k}={v}"]
        argv += [
            "--publish",
            f"{self.address}:{self.port}:{self.port}/tcp",
            "--user",
            f"{ids.guard_uid}:{ids.guard_gid}",
            "--read-only",
            "--memory",
            "512m",
            "--cpus",
            "1",
            "--pids-limit",
            "256",
            "--restart",
            "on-failure",
            "--init",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges:true",
            "--log-opt",
            "max-size=10m",
            "--log-opt",
            "max-file=2",
            "--mount",
            f"type=bind,source={guard.dir},target=/etc/claude-bottle,readonly",
            "--mount",
            f"type=bind,source={guard.audit},target=/var/log/claude-bottle/egress.jsonl",
            "--mount",
            f"type=bind,source={guard.requests},target=/var/log/claude-bottle/requests.jsonl",
            "--mount",
            f"type=bind,source={run_dir},target=/bottle-run",
            image,
            *self.guard_argv(guard, gateway),
        ]
        return argv


def create_network(slug: str, labels: Mapping[str, str]) -> str:
    """The bundle network, on a subnet of our choosing (so its gateway is known); its gateway."""
    name = bundle_names(slug).network
    for attempt in range(ATTEMPTS):
        subnet = ipaddress.ip_network(engine.pick_subnet())
        gateway = str(subnet[1])
        argv = ["network", "create", "--subnet", str(subnet), "--gateway", gateway]
        for k, v in labels.items():
            argv += ["--label", f"{k}={v}"]
        result = engine.docker(*argv, name)
        if result.ok:
            return gateway
        if "overlap" not in result.stderr.lower() or attempt + 1 == ATTEMPTS:
            engine.check(result, f"creating network {name}")
    raise BackendError(f"creating network {name}: no free subnet")  # pragma: no cover - the loop raises


def start_bundle(
    *,
    slug: str,
    port: int,
    guard: GuardInputs,
    image: str,
    ids: RuntimeIds,
    labels: Mapping[str, str],
    run_dir: Path,
    networks: Sequence[str] = (),
) -> Bundle:
    """The network and the guard container, published on a fresh loopback address; the guard (never the
    VM) also joins the manifest's outbound Docker networks (egress.networks), as on the Docker backend."""
    gateway = create_network(slug, labels)
    taken = addresses_in_use()
    for attempt in range(ATTEMPTS):
        bundle = Bundle(slug, pick_address(taken, port), port)
        argv = bundle.run_argv(guard=guard, image=image, ids=ids, labels=labels, run_dir=run_dir, gateway=gateway)
        result = engine.docker(*argv, timeout=120)
        if result.ok:
            for net in networks:
                engine.check(
                    engine.docker("network", "connect", net, bundle_names(slug).container),
                    f"connecting the guard of {slug} to {net}",
                )
            return bundle
        # Another process took the address between our probe and Docker's bind: draw again.
        engine.docker("rm", "-f", bundle_names(slug).container)
        taken.add(bundle.address)
        if "address already in use" not in result.stderr.lower() or attempt + 1 == ATTEMPTS:
            engine.check(result, f"starting {bundle_names(slug).container}")
    raise BackendError(f"starting the guard of {slug}: no free loopback address")  # pragma: no cover


def remove_bundle(slug: str) -> list[str]:
    """Container, then network; each best effort. One line per failure."""
    names = bundle_names(slug)
    failures = []
    rm = engine.docker("rm", "-f", names.container)
    if not rm.ok and "no such container" not in rm.stderr.lower():
        failures.append(f"docker rm -f {names.container}: {rm.stderr.strip()[-200:]}")
    net = engine.docker("network", "rm", names.network)
    if not net.ok and "not found" not in net.stderr.lower() and "no such network" not in net.stderr.lower():
        failures.append(f"docker network rm {names.network}: {net.stderr.strip()[-200:]}")
    return failures
