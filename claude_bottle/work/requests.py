"""Live egress grants and the agent's capability requests: judged by the operator, recorded, answered."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from claude_bottle.backend import (
    get_bottle_backend,
)
from claude_bottle.bottle.capabilities import Request, decide, pending
from claude_bottle.bottle.state import StateDir
from claude_bottle.errors import BottleError
from claude_bottle.guard_inputs.files import load_grants, save_grants

if TYPE_CHECKING:
    from claude_bottle.guard.policy import Rule


def grant_egress(state: StateDir, rules: Sequence[Rule], *, revoke: bool = False) -> list[Rule]:
    """Add (or remove) live egress grants. The guard re-reads its policy file within half a second, so a
    running bottle changes policy without a restart; grants.json keeps them for the bottle's next generation."""
    from claude_bottle.bottle import Bottle
    from claude_bottle.guard_inputs.inputs import rewrite_policy

    bottle = Bottle.recorded(state)
    with state.lock():
        grants = load_grants(state)
        for rule in rules:
            # A grant is named by host and ports; `private` is how it is held, not which one it is.
            same = [g for g in grants if (g.host, g.ports) == (rule.host, rule.ports)]
            if revoke:
                if not same:
                    held = ", ".join(g.label() for g in grants) or "none"
                    raise BottleError(f"{rule.label()} was never granted to {state.slug} (grants: {held})")
                grants = [g for g in grants if g not in same]
            else:
                grants = [g for g in grants if g not in same] + [rule]
        save_grants(state, grants)
        rewrite_policy(state, bottle.spec)
        get_bottle_backend(bottle.backend).policy_changed(state)
        _record_operator_action(state, "revoke" if revoke else "grant", [r.label() for r in rules])
    return grants


def _record_operator_action(state: StateDir, action: str, what: list[str]) -> None:
    """Operator changes go on the bottle's audit record too (appended; the guard appends alongside)."""
    from claude_bottle.guard.audit import append_chained

    append_chained(
        state.audit_path,
        {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "bottle": state.slug,
            "kind": "operator",
            "action": action,
            "egress": what,
            "decision": action,
            "reason": f"claude-bottle {action} by uid {os.getuid()}",
        },
    )


@dataclass
class Answered:
    egress: list[Request]
    packages: list[Request]

    @property
    def labels(self) -> list[str]:
        return [r.label for r in (*self.egress, *self.packages)]


def choose_requests(state: StateDir, ids: Sequence[str], *, every: bool) -> list[Request]:
    waiting = pending(state)
    if not waiting:
        raise BottleError(f"{state.slug} has no pending requests (`claude-bottle requests` lists them)")
    if every:
        return waiting
    by_id = {r.id: r for r in waiting}
    unknown = [i for i in ids if i not in by_id]
    if unknown or not ids:
        held = ", ".join(f"{r.id} ({r.label})" for r in waiting)
        raise BottleError(f"no pending request {', '.join(unknown) or '(none given)'} in {state.slug}: pending: {held}")
    return [by_id[i] for i in ids]


def answer_requests(
    state: StateDir, chosen: Sequence[Request], *, grant: bool, reason: str = "", private: bool = False
) -> Answered:
    """The operator's answer. A granted egress request becomes a live grant (the guard lets the waiting
    request through); a granted package is added to the bottle's image as a layer of its own (`rebuilt`),
    built when it resumes. Every answer is recorded and handed to the guard (its policy's decisions)."""
    from claude_bottle.bottle import Bottle
    from claude_bottle.guard.policy import Rule
    from claude_bottle.guard_inputs.inputs import rewrite_policy

    egress = [r for r in chosen if not r.package]
    packages = [r for r in chosen if r.package]
    if grant and egress:
        rules = []
        for r in egress:
            host, _, port = r.name.partition(":")
            rules.append(Rule.from_dict({"host": host, "private": private, **({"ports": [int(port)]} if port else {})}))
        grant_egress(state, rules)
    with state.lock():
        if grant and packages:
            record = state.read_whole()
            granted = {k: list(v) for k, v in record.granted_packages.items()}
            for r in packages:
                if r.name not in granted.setdefault(r.kind, []):
                    granted[r.kind].append(r.name)
            state.update(granted_packages=granted, rebuilt=True)
            # Its image recipe is now its own (the manifest no longer says it all): kept from cleanup until
            # the operator lets it go (`keep --release`).
            state.preserve("rebuilt")
        decide(state, list(chosen), "grant" if grant else "deny", reason)
        bottle = Bottle.recorded(state)
        rewrite_policy(state, bottle.spec)
        get_bottle_backend(bottle.backend).policy_changed(state)
        if state.read().status == "blocked":
            state.update(wants=[r.label for r in pending(state) if r.package])
        _record_operator_action(state, "grant-request" if grant else "deny-request", [r.label for r in chosen])
    return Answered(egress, packages)


def continuation_prompt(answered: Answered, *, granted: bool, reason: str = "") -> str:
    what = ", ".join(r.label for r in answered.packages)
    if granted:
        return f"The operator granted {what}: it is installed in this bottle now. Continue the task where you left off."
    why = f" ({reason})" if reason else ""
    return f"The operator refused {what}{why}. Continue the task without it, where you left off."
