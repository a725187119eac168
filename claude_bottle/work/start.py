"""Start and resume: a bottle's state dir, its host-side inputs, images, containers and readiness, rolled back on any
failure."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from claude_bottle.backend import (
    BottleBackend,
    BottlePlan,
    Progress,
    get_bottle_backend,
    manifest_ports,
    resolve_backend_name,
)
from claude_bottle.bottle.claude_code import (
    seed_config,
)
from claude_bottle.bottle.state import StateDir, process_started
from claude_bottle.errors import BottleError
from claude_bottle.guard_inputs.files import drop_secrets

if TYPE_CHECKING:
    from claude_bottle.bottle import Bottle
    from claude_bottle.guard_inputs.inputs import GuardInputs
    from claude_bottle.manifest import Manifest
from claude_bottle.work.common import Notify, Started, no_interrupts, say_nothing, terminations_as_exit
from claude_bottle.work.stop import remove_state
from claude_bottle.work.upkeep import after_run


def start_bottle(
    manifest: Manifest,
    agent_name: str,
    *,
    backend_flag: str | None,
    progress: Progress,
    show_plan: Callable[[BottlePlan], None] | None = None,
    root: Path | None = None,
    workspace_mode: str | None = None,
    context: str | None = None,
    isolation: str | None = None,
) -> Started:
    """A new bottle (generation 1): state dir, images, guard inputs, containers, ready. Rolled back on any
    failure. Every host path is checked before anything is built."""
    from claude_bottle.bottle import Bottle

    spec = manifest.bottles[manifest.agent(agent_name).bottle]
    backend_name, _source = resolve_backend_name(flag=backend_flag, manifest=spec.backend)
    backend = get_bottle_backend(backend_name)
    bottle = Bottle.new(
        manifest,
        agent_name,
        backend=backend_name,
        root=root,
        workspace_mode=workspace_mode,
        modes=backend.workspace_modes,
        context=context,
        isolation=isolation,
        isolations=backend.isolations,
    )
    bottle.state.create()
    try:
        bottle.state.write(
            bottle.record(
                owner_pid=os.getpid(), owner_started=process_started(os.getpid()), session_id=str(uuid.uuid4())
            )
        )
        if bottle.project is not None:  # worktree mode: the bottle's own checkout, on its own branch
            from claude_bottle.git.worktree import create

            info = create(bottle.state, bottle.project, bottle.ids)
            bottle.state.update(worktree=info)
            bottle = dataclasses.replace(bottle, worktree=info)
        elif bottle.mode == "copy":  # copy mode: a copy of its own, applied home by `claude-bottle apply`
            from claude_bottle.hostfs.copy_mode import create as create_copy

            create_copy(bottle.state, bottle.workspace, bottle.ids)
    except BaseException:
        bottle.state.remove()  # a full disk (or a signal) right after mkdir: nothing half-made stays
        raise
    return _bring_up(bottle, backend, progress, fresh=True, show_plan=show_plan)


def resume_bottle(state: StateDir, *, progress: Progress, notify: Notify = say_nothing) -> Started:
    """A new generation of an existing bottle from its state dir: same slug, same ~/.claude, same grants."""
    from claude_bottle.bottle import Bottle

    record = state.read_whole()
    backend = get_bottle_backend(record.backend)
    if record.status in ("running", "creating") and not state.abandoned(record):
        live = backend.statuses().get(state.slug)
        if live is not None and live.status == "running":
            raise BottleError(f"{state.slug} is running: `claude-bottle attach {state.slug}`, or stop it first")
    bottle = Bottle.recorded(state, check_paths=True, record=record)
    with state.lock():
        backend.stop(state=state)  # whatever an earlier generation left (a crash keeps its containers)
        after_run(state, notify)
    state.update(
        status="creating",
        generation=record.generation + 1,
        owner_pid=os.getpid(),
        owner_started=process_started(os.getpid()),
        error=None,
    )
    started = _bring_up(bottle, backend, progress, fresh=False)
    if state.preserved() in ("crash", "capability-block"):
        state.preserve_path.unlink(missing_ok=True)  # live again; an operator's `keep` stays
    return started


def _bring_up(
    bottle: Bottle,
    backend: BottleBackend,
    progress: Progress,
    *,
    fresh: bool,
    show_plan: Callable[[BottlePlan], None] | None = None,
) -> Started:
    from claude_bottle.guard_inputs.inputs import prepare_guard
    from claude_bottle.notify.watch import check as notify_check
    from claude_bottle.notify.watch import spawn as spawn_watcher

    state = bottle.state
    engine_touched = False
    try:
        # SIGTERM/SIGHUP (a kill, a closed terminal) end a start as Ctrl-C does: rolled back, nothing left.
        with terminations_as_exit(), state.lock():
            notify_check()  # the operator's settings, and its webhooks' secrets, before any slow work
            if bottle.agent.ports and not backend.publishes_ports:
                raise BottleError(f"ports: the {backend.name} backend cannot publish an agent's ports: remove them")
            plan = backend.plan(bottle=bottle)
            if show_plan:
                show_plan(plan)
            # Host-side inputs first (credentials, CA bundle): a missing one fails before minutes of build.
            guard = prepare_guard(
                state,
                bottle.spec,
                base=bottle.base,
                roots=bottle.paths.roots,
                ca_certs=bottle.paths.ca_certs,
                ids=bottle.ids,
                environ=os.environ,
            )
            _claude_home(bottle, placeholder=bool(guard.agent_env))
            images = backend.prepare_images(plan=plan, progress=progress)
            state.update(images=images, ran_with=_ran_with(bottle, guard))
            engine_touched = True
            # From here the agent may write the workspace: what git would read is settled when the run ends.
            state.update(run_started=time.time(), git_protected=backend.read_only_paths(bottle))
            backend.start(plan=plan, images=images, guard=guard, progress=progress)
            progress("waiting for the guard")
            backend.wait_ready(state=state)
            if bottle.agent.ports:
                progress("publishing the agent's ports")
                backend.publish_ports(state=state, ports=manifest_ports(bottle))
            state.update(status="running")
            try:
                spawn_watcher(state)  # word when it needs someone (notify/watch.py)
            except OSError as exc:
                progress(f"warning: no notifications for {state.slug}: {exc.strerror}")
    except BaseException as exc:
        with no_interrupts():
            drop_secrets(state)
            if not fresh:  # never remove a bottle's history: put it back as it was, for cleanup or resume
                with contextlib.suppress(BottleError):
                    backend.stop(state=state)
                state.update(status="stopped", error=f"resume failed: {exc!r}")
            elif engine_touched:
                _roll_back(backend, state, exc)
            else:  # nothing was created but images (which are cache, not leftovers)
                state.remove()
        raise
    return Started(bottle, backend, plan)


def _ran_with(bottle: Bottle, guard: GuardInputs) -> dict[str, str]:
    """The hashes of what this run starts with, kept in the record (`claude-bottle report`)."""
    import hashlib

    out = {"bottle spec": hashlib.sha256(json.dumps(bottle.spec.model_dump(mode="json"), sort_keys=True).encode())}
    policy = guard.dir / "policy.json"
    if policy.is_file():
        out["policy"] = hashlib.sha256(policy.read_bytes())
    if bottle.manifest_path is not None and bottle.manifest_path.is_file():
        out["manifest"] = hashlib.sha256(bottle.manifest_path.read_bytes())
    return {k: v.hexdigest() for k, v in out.items()}


def _claude_home(bottle: Bottle, *, placeholder: bool) -> None:
    """The agent's ~/.claude on the host (transcripts live there), with Claude Code's first-run answers,
    owned by the agent's uid (changed without following any link the agent may have left there)."""
    from claude_bottle.guard_inputs.credentials import PLACEHOLDER
    from claude_bottle.hostfs.walk import Walk

    home = bottle.state.claude_home
    # Readable by this user when the bottle user will own it (the state dir around it stays 0700).
    home.mkdir(mode=0o755 if bottle.ids.needs_helper else 0o700, exist_ok=True)
    try:
        seed_config(home, placeholder_key=PLACEHOLDER if placeholder else None)
    except PermissionError:
        if not bottle.ids.needs_helper:
            raise
        # The bottle user's own ~/.claude (a later generation) that its agent removed the answers from: theirs
        # to keep as they left it; Claude Code asks its first-run questions again.
    if os.getuid() == 0:
        ids = bottle.ids
        os.lchown(home, ids.agent_uid, ids.agent_gid)
        for d in Walk(home):
            for e in d.entries:
                with contextlib.suppress(OSError):
                    os.chown(e.name, ids.agent_uid, ids.agent_gid, dir_fd=d.fd, follow_symlinks=False)


def _roll_back(backend: BottleBackend, state: StateDir, exc: BaseException) -> None:
    try:
        backend.stop(state=state)
        remove_state(backend, state)
    except BottleError as stop_exc:
        # Could not remove what was made: keep the record so `cleanup` finds and reaps it.
        state.update(status="failed", error=f"start failed ({exc!r}); rollback failed: {stop_exc}")
