"""What the verbs do, as plain functions: start (with rollback), stop, run claude, list bottles."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .backend import BottleBackend, BottlePlan, Progress, get_bottle_backend, resolve_backend_name
from .errors import BottleError
from .gitguard import settle_bottle
from .guard_config import GuardFiles, load_grants, policy_document, save_grants
from .manifest import AgentSpec, BottleSpec, EgressRule, Manifest
from .paths import BottlePaths
from .pipelock import pipelock_config, to_yaml
from .state import BottleRecord, StateDir, bottle_home, new_slug, process_started, state_root, write_private

__all__ = [
    "claude_argv",
    "grant_egress",
    "resume_bottle",
    "run_claude",
    "start_bottle",
    "stop_bottle",
]


Notify = Callable[[str], None]  # a line for the operator (what a verb found, e.g. a quarantined git hook)


def _quiet(_line: str) -> None:
    pass


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
    show_plan: Callable[[BottlePlan], None] | None = None,
    root: Path | None = None,
) -> Started:
    """A new bottle (generation 1): state dir, images, containers, guard ready. Rolled back on any failure."""
    agent = manifest.agent(agent_name)
    bottle = manifest.bottles[agent.bottle]
    workspace = manifest.workspace(agent_name)
    if not workspace.is_dir():
        raise BottleError(f"workspace {workspace} does not exist: create it or fix agents.{agent_name}.workspace")
    paths = _check_paths(bottle, workspace, manifest.directory, root)
    backend_name, _source = resolve_backend_name(flag=backend_flag, manifest=bottle.backend)
    backend = get_bottle_backend(backend_name)
    slug = new_slug(agent_name)
    state = StateDir(slug, root)
    state.create()
    state.write(
        BottleRecord(
            slug=slug,
            agent=agent_name,
            bottle=agent.bottle,
            backend=backend_name,
            manifest_path=str(manifest.path) if manifest.path else None,
            manifest={"bottle": bottle.model_dump(mode="json"), "agent": agent.model_dump(mode="json")},
            workspace=str(paths.workspace),
            writable=[str(p) for p in paths.writable],
            owner_pid=os.getpid(),
            owner_started=process_started(os.getpid()),
            session_id=str(uuid.uuid4()),
        )
    )
    return _bring_up(
        state, backend, agent_name, agent, bottle, paths, manifest.path, progress, fresh=True, show_plan=show_plan
    )


def _check_paths(bottle: BottleSpec, workspace: Path, base: Path, root: Path | None) -> BottlePaths:
    """Every host path the bottle will bind or read, checked before anything is built (paths.py)."""
    from .paths import check_bottle_paths

    return check_bottle_paths(
        bottle, workspace, base, state_root=root or state_root(), state_home=bottle_home(), home=Path.home()
    )


def resume_bottle(state: StateDir, *, progress: Progress, notify: Notify = _quiet) -> Started:
    """A new generation of an existing bottle from its state dir: same slug, same ~/.claude, same grants."""
    from .manifest import AgentSpec, BottleSpec

    record = state.read()
    backend = get_bottle_backend(record.backend)
    if record.status in ("running", "creating") and not state.abandoned(record):
        live = backend.statuses().get(state.slug)
        if live is not None and live.status == "running":
            raise BottleError(f"{state.slug} is running: `claude-bottle attach {state.slug}`, or stop it first")
    agent = AgentSpec.model_validate(record.manifest.get("agent", {}))
    bottle = BottleSpec.model_validate(record.manifest.get("bottle", {}))
    workspace = Path(record.workspace or ".")
    if not workspace.is_dir():
        raise BottleError(f"workspace {workspace} of {state.slug} no longer exists: restore it to resume")
    manifest_path = Path(record.manifest_path) if record.manifest_path else None
    # Checked again: since the last run an agent (this one or another) may have planted a link on the way.
    paths = _check_paths(bottle, workspace, manifest_path.parent if manifest_path else workspace, state.path.parent)
    with state.lock():
        backend.stop(state=state)  # whatever an earlier generation left (a crash keeps its containers)
        GuardFiles(state).drop_secrets()
        state.settle_snapshot()
        settle_bottle(state, notify)
    state.update(
        status="creating",
        generation=record.generation + 1,
        owner_pid=os.getpid(),
        owner_started=process_started(os.getpid()),
        error=None,
    )
    started = _bring_up(state, backend, record.agent, agent, bottle, paths, manifest_path, progress, fresh=False)
    if state.preserved() in ("crash", "capability-block"):
        state.preserve_path.unlink(missing_ok=True)  # live again; an operator's `keep` stays
    return started


def _bring_up(
    state: StateDir,
    backend: BottleBackend,
    agent_name: str,
    agent: AgentSpec,
    bottle: BottleSpec,
    paths: BottlePaths,
    manifest_path: Path | None,
    progress: Progress,
    *,
    fresh: bool,
    show_plan: Callable[[BottlePlan], None] | None = None,
) -> Started:
    engine_touched = False
    try:
        with state.lock():
            plan = backend.plan(
                slug=state.slug,
                agent_name=agent_name,
                agent=agent,
                bottle_name=state.read().bottle,
                bottle=bottle,
                workspace=paths.workspace,
                paths=paths,
                state=state,
                manifest_path=manifest_path,
            )
            if show_plan:
                show_plan(plan)
            images = backend.prepare_images(plan=plan, progress=progress)
            state.update(images=images)
            engine_touched = True
            # From here the agent may write the workspace: what git would read is settled when the run ends.
            state.update(run_started=time.time(), git_protected=list(paths.protected))
            backend.start(plan=plan, images=images, progress=progress)
            progress("waiting for the guard")
            backend.wait_ready(state=state)
            state.update(status="running")
    except BaseException as exc:
        with _no_interrupts():
            if not fresh:  # never remove a bottle's history: put it back as it was, for cleanup or resume
                with contextlib.suppress(BottleError):
                    backend.stop(state=state)
                state.update(status="stopped", error=f"resume failed: {exc!r}")
            elif engine_touched:
                _roll_back(backend, state, exc)
            else:  # nothing was created but images (which are cache, not leftovers)
                state.remove()
        raise
    return Started(state.slug, state, backend, plan)


def _roll_back(backend: BottleBackend, state: StateDir, exc: BaseException) -> None:
    try:
        backend.stop(state=state)
    except BottleError as stop_exc:
        # Could not remove what was made: keep the record so `cleanup` finds and reaps it.
        state.update(status="failed", error=f"start failed ({exc!r}); rollback failed: {stop_exc}")
        return
    state.remove()


def stop_bottle(
    state: StateDir, *, remove: bool = False, status: str = "stopped", notify: Notify = _quiet
) -> BottleRecord:
    record = state.read()
    backend = get_bottle_backend(record.backend)
    with state.lock():
        backend.stop(state=state)
        GuardFiles(state).drop_secrets()
        state.settle_snapshot()  # a crash `ls` noticed: its snapshot, now that nothing writes any more
        settle_bottle(state, notify)
        if record.status == "crashed" and status == "stopped":
            status = "crashed"  # stopping a crashed bottle keeps what happened to it
        record = state.update(status=status, attached_pid=None)
        if remove:
            if state.preserved():
                raise BottleError(f"{state.slug} is preserved ({state.preserved()}): stopped, state kept")
            state.remove()
    return record


def claude_argv(
    agent: AgentSpec, *, prompt: str | None, session_id: str | None = None, resume: bool = False
) -> list[str]:
    """The claude command line for an agent. The bottle is the boundary, so permissions are skipped
    inside it unless the agent asks for another permission_mode."""
    argv = ["claude"]
    if agent.permission_mode == "bypassPermissions":
        argv.append("--dangerously-skip-permissions")
    else:
        argv += ["--permission-mode", agent.permission_mode]
    if agent.model:
        argv += ["--model", agent.model]
    if agent.append_system_prompt:
        argv += ["--append-system-prompt", agent.append_system_prompt]
    argv += list(agent.claude_args)
    if session_id:
        argv += ["--resume", session_id] if resume else ["--session-id", session_id]
    if prompt:
        argv += ["-p", prompt]
    return argv


SESSION = "claude"  # the tmux session holding claude inside the bottle
EXIT_FILE = "/tmp/claude-bottle-exit"  # noqa: S108 - inside the agent container, written by bottle-run
RUN_LOG = "/home/claude/.claude/bottle-run.log"  # a detached headless run's output (state dir: claude-home)


@dataclass
class RunResult:
    exit_code: int
    detached: bool = False
    crashed: bool = False


def start_session(backend: BottleBackend, state: StateDir, argv: list[str], *, log: bool = False) -> None:
    """claude in a detached tmux session inside the bottle, so a terminal can attach and detach at will."""
    env = ["-e", f"BOTTLE_RUN_LOG={RUN_LOG}"] if log else []
    tmux = ["tmux", "new-session", "-d", "-s", SESSION, "-x", "200", "-y", "50", *env, "--", "bottle-run", *argv]
    rc = backend.exec(state=state, argv=tmux, tty=False, interactive=False)
    if rc != 0:
        raise BottleError(f"could not start claude in {state.slug} (tmux exit {rc})")


def run_claude(
    started: Started,
    agent: AgentSpec,
    *,
    prompt: str | None,
    detach: bool,
    resume: bool,
    tty: bool,
    notify: Notify = _quiet,
) -> RunResult:
    """Run claude in a started bottle. Foreground runs stop the bottle when claude ends; an abnormal end
    (non-zero exit, killed container, this CLI terminated) preserves the bottle as crashed."""
    state, backend = started.state, started.backend
    record = state.read()
    argv = claude_argv(agent, prompt=prompt, session_id=record.session_id, resume=resume and bool(record.session_id))
    if detach:  # interactive or headless, it runs in tmux: `attach` brings it to a terminal
        start_session(backend, state, argv, log=bool(prompt))
        return RunResult(0, detached=True)
    state.update(attached_pid=os.getpid(), attached_started=process_started(os.getpid()))
    try:
        with _terminations_as_exit():
            if prompt:
                rc = backend.exec(state=state, argv=argv, tty=False, interactive=False)
            else:
                maybe = _interactive(started, argv, tty=tty)
                if maybe is None:
                    state.update(attached_pid=None)
                    return RunResult(0, detached=True)
                rc = maybe
    except (KeyboardInterrupt, BottleError):
        _finish(started, abnormal=None, notify=notify)  # the user stopped it, or it never began: stopped, resumable
        raise
    except BaseException as exc:
        _finish(started, abnormal=f"claude-bottle was terminated ({type(exc).__name__} {exc})", notify=notify)
        raise
    crashed = rc != 0
    _finish(started, abnormal=f"claude exited with {rc}" if crashed else None, notify=notify)
    return RunResult(rc, crashed=crashed)


def _interactive(started: Started, argv: list[str], *, tty: bool) -> int | None:
    """claude in tmux, this terminal attached. None when the user detached (claude still running)."""
    state, backend = started.state, started.backend
    if not tty:
        raise BottleError(
            "an interactive claude needs a terminal: run this from one, pass --prompt TEXT for a "
            "headless run, or --detach and `claude-bottle attach SLUG` later"
        )
    start_session(backend, state, argv)
    backend.exec(state=state, argv=["tmux", "attach-session", "-t", SESSION], tty=True, interactive=True)
    still, _ = backend.exec_output(state=state, argv=["tmux", "has-session", "-t", SESSION])
    if still == 0:
        return None
    code, out = backend.exec_output(state=state, argv=["cat", EXIT_FILE])
    rc = parse_exit_code(out) if code == 0 else None
    return UNREADABLE_EXIT if rc is None else rc


UNREADABLE_EXIT = 137  # what an unreadable exit file counts as: killed


def parse_exit_code(text: str) -> int | None:
    """The exit code bottle-run left, strictly: ASCII digits only (the agent can write this file, and
    int() also takes "²", "+1" or "1_0")."""
    t = text.strip()
    return int(t) if re.fullmatch(r"[0-9]{1,3}", t) and int(t) < 256 else None


def _finish(started: Started, *, abnormal: str | None, notify: Notify = _quiet) -> None:
    """End a foreground run: preserve it when it ended badly, then stop it. Each step is tried on its own:
    a tree the agent made that cannot be copied must not leave the bottle running or unpreserved."""
    state = started.state
    with _no_interrupts():
        if abnormal:
            try:
                state.preserve_crash(abnormal)
            except (OSError, BottleError):
                with contextlib.suppress(OSError, BottleError):
                    state.preserve("crash")
        with contextlib.suppress(BottleError):
            stop_bottle(state, status="crashed" if abnormal else "stopped", notify=notify)


@contextlib.contextmanager
def _terminations_as_exit() -> Iterator[None]:
    """SIGTERM/SIGHUP (a closed terminal, a kill) end a foreground run through the same path as an error,
    so the bottle is preserved and stopped rather than left running with nobody attached."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


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
