"""Smolmachines cleanup (SPEC C3): machines from `Machine.list`, sidecar containers and bundle networks
from Docker, this namespace's only (by label).

A bottle is live while its machine runs and its guard runs: cleanup keeps it (and says how to stop it).
Everything else goes: a machine that stopped, failed or lost its guard (stop + delete, without booting
it), then its sidecar container (`rm -f`), then its network (`network rm`), each best effort. Without the
SDK the machines cannot be listed; the sidecars and networks are still reaped (a VM without its guard has
no way out) and the plan says so. State dirs are the Docker plan's (it asks every backend what is live).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from claude_bottle import engine
from claude_bottle.backend import BottleCleanupPlan, Report
from claude_bottle.backend.smolmachines import sdk
from claude_bottle.backend.smolmachines.bundle import ROLE_LABEL
from claude_bottle.errors import BottleError
from claude_bottle.identity import LABEL, SLUG_LABEL, namespace, object_labels, owned_by

__all__ = ["SmolCleanupPlan", "plan_cleanup", "run_cleanup"]

BACKEND = "smolmachines"


@dataclass(frozen=True)
class Item:
    slug: str
    name: str
    detail: str = ""


@dataclass
class SmolCleanupPlan(BottleCleanupPlan):
    backend: str = BACKEND
    machines: list[Item] = field(default_factory=list)
    containers: list[Item] = field(default_factory=list)
    networks: list[Item] = field(default_factory=list)
    live: list[str] = field(default_factory=list)  # slugs kept: machine and guard running
    notes: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.machines or self.containers or self.networks)

    def lines(self) -> list[str]:
        out = ["--- smolmachines backend ---", *(f"note: {n}" for n in self.notes)]
        out += [f"machine: {m.name} ({m.detail}) -> stop + delete" for m in self.machines]
        out += [f"sidecar container: {c.name} ({c.detail}) -> docker rm -f" for c in self.containers]
        out += [f"bundle network: {n.name} -> docker network rm" for n in self.networks]
        out += [f"kept live bottle: {s} (`claude-bottle stop {s}` ends it)" for s in self.live]
        if self.empty() and not self.live:
            out.append("nothing to clean up")
        return out


def ours(labels: dict[str, str], ns: str) -> bool:
    """This namespace's, and this backend's (by label: a name claims nothing)."""
    return owned_by(labels, ns) and labels.get(f"{LABEL}.backend") == BACKEND


def plan_cleanup() -> SmolCleanupPlan:
    """Two calls (one `Machine.list`, one `docker ps`, one `docker network ls`), nothing changed."""
    ns = namespace()
    plan = SmolCleanupPlan()
    machines: dict[str, sdk.Summary] = {}
    if sdk.installed():
        labels = object_labels(BACKEND, ns=ns)
        machines = {m.labels.get(SLUG_LABEL, m.name): m for m in sdk.Vm().list(labels) if ours(dict(m.labels), ns)}
    else:
        plan.notes.append(f"the smolmachines SDK is not installed ({sdk.INSTALL}): machines not listed")
    try:
        # The filters only narrow what the engine sends; what is ours is decided by the labels.
        containers = [
            r
            for r in engine.ps_rows(f"label={LABEL}.backend={BACKEND}", f"label={ROLE_LABEL}=sidecars")
            if ours(r.labels, ns) and r.labels.get(ROLE_LABEL) == "sidecars"
        ]
        networks = [r for r in engine.network_rows(f"label={LABEL}.backend={BACKEND}") if ours(r.labels, ns)]
    except BottleError as exc:
        plan.notes.append(f"sidecars not listed ({exc})")
        containers, networks = [], []
    guards = {r.labels.get(SLUG_LABEL, ""): r for r in containers}
    live = {
        slug
        for slug, m in machines.items()
        if m.state == "running" and slug in guards and guards[slug].state == "running"
    }
    plan.live = sorted(live)
    for slug, m in sorted(machines.items()):
        if slug not in live:
            guard = guards[slug].state if slug in guards else "missing"
            plan.machines.append(Item(slug, m.name, f"{m.state}, guard {guard}"))
    for r in sorted(containers, key=lambda r: r.name):
        slug = r.labels.get(SLUG_LABEL, "")
        if slug not in live:
            plan.containers.append(Item(slug, r.name, r.state))
    for n in sorted(networks, key=lambda n: n.name):
        slug = n.labels.get(SLUG_LABEL, "")
        if slug not in live:
            plan.networks.append(Item(slug, n.name))
    return plan


def run_cleanup(plan: SmolCleanupPlan, report: Report) -> list[str]:
    """Machines, then sidecars, then networks; one failure is reported and the rest goes on."""
    failures: list[str] = []

    def fail(what: str, why: str) -> None:
        failures.append(f"{what}: {why}")
        report(f"failed {what}: {why}")

    if plan.machines:
        try:
            vm: sdk.Vm | None = sdk.Vm()
        except BottleError as exc:
            vm = None
            for m in plan.machines:
                fail(f"machine {m.name}", str(exc))
        for m in plan.machines:
            if vm is None:
                break
            try:
                vm.delete(m.name)
            except BottleError as exc:
                fail(f"machine {m.name}", str(exc))
                continue
            report(f"removed machine {m.name}")
            plan.stopped.append(m.slug)
    for c in plan.containers:
        r = engine.docker("rm", "-f", c.name)
        if r.ok or "no such container" in r.stderr.lower():
            report(f"removed sidecar container {c.name}")
            if c.slug and c.slug not in {m.slug for m in plan.machines}:
                plan.stopped.append(c.slug)
        else:
            fail(f"sidecar container {c.name}", (r.stderr.strip().splitlines() or ["failed"])[-1])
    for n in plan.networks:
        r = engine.docker("network", "rm", n.name)
        if r.ok or "not found" in r.stderr.lower():
            report(f"removed bundle network {n.name}")
        else:
            fail(f"bundle network {n.name}", (r.stderr.strip().splitlines() or ["failed"])[-1])
    return failures
