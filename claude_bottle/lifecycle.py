"""What the verbs do, as plain functions: start (with rollback), stop, run claude, list bottles."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .backend import BottleBackend, BottlePlan, Progress, get_bottle_backend, resolve_backend_name
from .errors import BottleError
from .guard_config import GuardFiles, load_grants, policy_document, save_grants
from .manifest import AgentSpec, BottleSpec, EgressRule, Manifest
from .pipelock import pipelock_config, to_yaml
from .state import BottleRecord, StateDir, new_slug, process_started, write_private

__all__ = ["claude_argv", "grant_egress", "start_bottle", "stop_bottle"]


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Let a rollback finish: a second Ctrl-C must not leave a half-removed bottle."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@dataclass
class Started:
    slug: str
    state: StateDir
    backend: BottleBackend
    plan: BottlePlan


def start_bottle(
    manifest: Manifest,
    agent_name: str,
    *,
    backend_flag: str | None,
    progress: Progress,
    show_plan: Progress | None = None,
    root: Path | None = None,
) -> Started:
    agent = manifest.agent(agent_name)
    bottle = manifest.bottles[agent.bottle]
    workspace = manifest.workspace(agent_name)
    if not workspace.is_dir():
        raise BottleError(f"workspace {workspace} does not exist: create it or fix agents.{agent_name}.workspace")
    backend_name, _source = resolve_backend_name(flag=backend_flag, manifest=bottle.backend)
    backend = get_bottle_backend(backend_name)
    slug = new_slug(agent_name)
    state = StateDir(slug, root)
    state.create()
    record = BottleRecord(
        slug=slug,
        agent=agent_name,
        bottle=agent.bottle,
        backend=backend_name,
        manifest_path=str(manifest.path) if manifest.path else None,
        manifest={"bottle": bottle.model_dump(mode="json"), "agent": agent.model_dump(mode="json")},
        workspace=str(workspace),
        owner_pid=os.getpid(),
        owner_started=process_started(os.getpid()),
    )
    state.write(record)
    engine_touched = False
    try:
        with state.lock():
            plan = backend.plan(
                slug=slug,
                agent_name=agent_name,
                agent=agent,
                bottle_name=agent.bottle,
                bottle=bottle,
                workspace=workspace,
                state=state,
                manifest_path=manifest.path,
            )
            if show_plan:
                show_plan(slug)
            images = backend.prepare_images(plan=plan, progress=progress)
            state.update(images=images)
            engine_touched = True
            backend.start(plan=plan, images=images, progress=progress)
            progress("waiting for the guard")
            backend.wait_ready(state=state)
            state.update(status="running")
    except BaseException as exc:
        with _no_interrupts():
            if engine_touched:
                _roll_back(backend, state, exc)
            else:  # nothing was created but images (which are cache, not leftovers)
                state.remove()
        raise
    return Started(slug, state, backend, plan)


def _roll_back(backend: BottleBackend, state: StateDir, exc: BaseException) -> None:
    try:
        backend.stop(state=state)
    except BottleError as stop_exc:
        # Could not remove what was made: keep the record so `cleanup` finds and reaps it.
        state.update(status="failed", error=f"start failed ({exc!r}); rollback failed: {stop_exc}")
        return
    state.remove()


def stop_bottle(state: StateDir, *, remove: bool = False) -> BottleRecord:
    record = state.read()
    backend = get_bottle_backend(record.backend)
    with state.lock():
        backend.stop(state=state)
        record = state.update(status="stopped")
        if remove:
            if state.preserved():
                raise BottleError(f"{state.slug} is preserved ({state.preserved()}): stopped, state kept")
            state.remove()
    return record


def claude_argv(agent: AgentSpec, *, prompt: str | None) -> list[str]:
    argv = ["claude", "--dangerously-skip-permissions"]
    if agent.model:
        argv += ["--model", agent.model]
    if agent.append_system_prompt:
        argv += ["--append-system-prompt", agent.append_system_prompt]
    argv += list(agent.claude_args)
    if prompt:
        argv += ["-p", prompt]
    return argv


def grant_egress(state: StateDir, rules: Sequence[EgressRule], *, revoke: bool = False) -> list[EgressRule]:
    """Add (or remove) live egress grants. The guard re-reads its policy file within half a second, so a
    running bottle changes policy without a restart; grants.json keeps them for the bottle's next generation."""
    record = state.read()
    bottle = BottleSpec.model_validate(record.manifest.get("bottle", {}))
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
        files = GuardFiles(state)
        if bottle.egress.engine == "pipelock":
            write_private(files.dir / "pipelock.yaml", to_yaml(pipelock_config(bottle, grants)) + "\n")
        elif files.policy.exists():
            files.write_policy(policy_document(state.slug, bottle, grants))
        _record_operator_action(state, "revoke" if revoke else "grant", [r.label() for r in rules])
    return grants


def _record_operator_action(state: StateDir, action: str, what: list[str]) -> None:
    """Operator changes go on the bottle's audit record too (appended; the guard appends alongside)."""
    line = json.dumps(
        {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "bottle": state.slug,
            "kind": "operator",
            "action": action,
            "egress": what,
            "decision": action,
            "reason": f"claude-bottle {action} by uid {os.getuid()}",
        }
    )
    fd = os.open(state.audit_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
