"""What the verbs do, as plain functions (the work layer): start and resume (with rollback), run claude,
attach, exec, shell, logs, stop, grant, doctor and cleanup. Verbs in `cli/` parse and print; everything
else happens here, against the `BottleBackend` ABC only."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from claude_bottle.backend import (
    BottleBackend,
    BottleCleanupPlan,
    BottlePlan,
    Check,
    Progress,
    Report,
    get_bottle_backend,
    known_backend_names,
    resolve_backend_name,
)
from claude_bottle.capabilities import Request, decide, pending
from claude_bottle.claude_code import (
    NORMAL_ENDS,
    attach_argv,
    claude_argv,
    read_exit_code,
    seed_config,
    session_running,
    start_session,
    terminal_env,
)
from claude_bottle.errors import BottleError
from claude_bottle.gitguard import settle_bottle
from claude_bottle.guard.files import drop_secrets, load_grants, save_grants
from claude_bottle.state import BottleRecord, StateDir, process_started

if TYPE_CHECKING:
    from claude_bottle.bottle import Bottle
    from claude_bottle.egress.policy import Rule
    from claude_bottle.guard.inputs import GuardInputs
    from claude_bottle.manifest import Manifest

__all__ = [
    "Notify",
    "RunResult",
    "Started",
    "attach_bottle",
    "cleanup_plans",
    "doctor_checks",
    "exec_in",
    "grant_egress",
    "logs_of",
    "resume_bottle",
    "run_claude",
    "run_cleanup",
    "start_bottle",
    "stop_bottle",
]

Notify = Callable[[str], None]  # a line for the operator (what a verb found, e.g. a quarantined git hook)


def _quiet(_line: str) -> None:
    pass


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Let a rollback finish: a second Ctrl-C (or SIGTERM, SIGHUP) must not leave a half-removed bottle."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@dataclass
class Started:
    bottle: Bottle
    backend: BottleBackend
    plan: BottlePlan

    @property
    def slug(self) -> str:
        return self.bottle.slug

    @property
    def state(self) -> StateDir:
        return self.bottle.state


# -- start and resume -----------------------------------------------------------------------------------
def start_bottle(
    manifest: Manifest,
    agent_name: str,
    *,
    backend_flag: str | None,
    progress: Progress,
    show_plan: Callable[[BottlePlan], None] | None = None,
    root: Path | None = None,
    workspace_mode: str | None = None,
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
    )
    bottle.state.create()
    try:
        bottle.state.write(
            bottle.record(
                owner_pid=os.getpid(), owner_started=process_started(os.getpid()), session_id=str(uuid.uuid4())
            )
        )
        if bottle.project is not None:  # worktree mode: the bottle's own checkout, on its own branch
            from claude_bottle.worktree import create

            info = create(bottle.state, bottle.project, bottle.ids)
            bottle.state.update(worktree=info)
            bottle = dataclasses.replace(bottle, worktree=info)
        elif bottle.mode == "copy":  # copy mode: a copy of its own, applied home by `claude-bottle apply`
            from claude_bottle.workcopy import create as create_copy

            create_copy(bottle.state, bottle.workspace, bottle.ids)
    except BaseException:
        bottle.state.remove()  # a full disk (or a signal) right after mkdir: nothing half-made stays
        raise
    return _bring_up(bottle, backend, progress, fresh=True, show_plan=show_plan)


def resume_bottle(state: StateDir, *, progress: Progress, notify: Notify = _quiet) -> Started:
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
        _after_run(state, notify)
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
    from claude_bottle.guard.inputs import prepare_guard

    state = bottle.state
    engine_touched = False
    try:
        # SIGTERM/SIGHUP (a kill, a closed terminal) end a start as Ctrl-C does: rolled back, nothing left.
        with _terminations_as_exit(), state.lock():
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
            state.update(status="running")
    except BaseException as exc:
        with _no_interrupts():
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
    from claude_bottle.guard.credentials import PLACEHOLDER
    from claude_bottle.walk import Walk

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


def _after_run(state: StateDir, notify: Notify) -> None:
    """What follows every run, its containers gone: credentials off the disk, a transcript snapshot an
    `ls` owed, and the workspace settled for git on the host (gitguard)."""
    drop_secrets(state)
    state.settle_snapshot()
    settle_bottle(state, notify)


# -- stop ------------------------------------------------------------------------------------------------
def stop_bottle(
    state: StateDir, *, remove: bool = False, status: str = "stopped", notify: Notify = _quiet
) -> BottleRecord:
    record = state.read()
    if record.bottle == "?":  # a stub: nothing was started from it, so nothing runs; only --rm does anything
        if not remove:
            state.read_whole()
        if state.preserved():
            raise BottleError(f"{state.slug} is preserved ({state.preserved()}): state kept")
        with state.lock():
            state.remove()
        return record
    backend = get_bottle_backend(record.backend)
    with state.lock():
        backend.stop(state=state)
        _after_run(state, notify)
        if record.status in ("crashed", "blocked") and status == "stopped":
            status = record.status  # stopping a crashed or blocked bottle keeps what happened to it
        record = state.update(status=status, attached_pid=None)
        if remove:
            if state.preserved():
                raise BottleError(f"{state.slug} is preserved ({state.preserved()}): stopped, state kept")
            remove_state(backend, state)
    return record


def remove_state(backend: BottleBackend, state: StateDir) -> None:
    """A state dir removed; what this user cannot remove (the bottle user's files, for a normal user) is
    first removed with the backend's help."""
    if state.foreign_files():
        backend.release_files(state)
    try:
        state.remove()
    except PermissionError as exc:
        raise BottleError(
            f"cannot remove {exc.filename or state.path} (the bottle's agent owns it): run `sudo rm -rf {state.path}`"
        ) from None


def ensure_stopped(state: StateDir, verb: str) -> None:
    """Refuse to bring a bottle's work home while any of it still runs, asked of its backend (a record can
    say crashed or blocked while its containers run on: its agent could change what is being read)."""
    record = state.read()
    backend = get_bottle_backend(record.backend)
    live = backend.statuses().get(state.slug)
    if live is not None and live.status == "running":
        raise BottleError(
            f"{state.slug} is running: its work can change between your review and the {verb}; "
            f"`claude-bottle stop {state.slug}` first (diff and log work while it runs)"
        )


def forget_bottle(state: StateDir) -> None:
    """A bottle whose engine is gone for good: its state dir removed without asking that engine (its
    secrets first zeroed). Refused while it is preserved, as `stop --rm` is."""
    with state.lock():
        if state.preserved():
            raise BottleError(
                f"{state.slug} is preserved ({state.preserved()}): `claude-bottle keep {state.slug} --release` first"
            )
        with contextlib.suppress(OSError):
            drop_secrets(state)
        state.remove()


# -- claude runs ------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    exit_code: int
    detached: bool = False
    crashed: bool = False
    blocked: bool = False


def run_claude(
    started: Started,
    *,
    prompt: str | None,
    detach: bool,
    resume: bool,
    tty: bool,
    notify: Notify = _quiet,
    interactive_prompt: bool = False,
) -> RunResult:
    """Run claude in a started bottle. Foreground runs stop the bottle when claude ends; an abnormal end
    (non-zero exit, killed container, this CLI terminated) preserves the bottle as crashed."""
    state, backend = started.state, started.backend
    record = state.read()
    headless = bool(prompt) and not interactive_prompt
    argv = claude_argv(
        started.bottle.agent,
        prompt=prompt,
        session_id=record.session_id,
        resume=resume and state.resumable(record),
        headless=headless,
    )
    state.update(run_mode="detached" if detach else "headless" if headless else "interactive")
    if detach:  # interactive or headless, it runs in tmux: `attach` brings it to a terminal
        start_session(backend, state, argv, log=headless)
        return RunResult(0, detached=True)
    state.update(attached_pid=os.getpid(), attached_started=process_started(os.getpid()))
    try:
        with _terminations_as_exit():
            if headless:
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
    crashed = rc != 0 if headless else rc not in NORMAL_ENDS  # /exit or Ctrl-C twice: the user ended it
    _finish(started, abnormal=f"claude exited with {rc}" if crashed else None, notify=notify)
    if state.read().status == "blocked":
        return RunResult(rc, blocked=True)
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
    backend.exec(state=state, argv=attach_argv(), tty=True, interactive=True, env=terminal_env())
    if session_running(backend, state):
        return None
    return read_exit_code(backend, state)


def _finish(started: Started, *, abnormal: str | None, notify: Notify = _quiet) -> None:
    """End a foreground run: preserve it when it ended badly, then stop it. Each step is tried on its own:
    a tree the agent made that cannot be copied must not leave the bottle running or unpreserved."""
    state = started.state
    wants = [r.label for r in pending(state) if r.package]
    with _no_interrupts():
        if wants:  # claude stopped itself to ask for packages: blocked until the operator answers
            try:
                state.preserve_block(wants)
            except (OSError, BottleError):
                with contextlib.suppress(OSError, BottleError):
                    state.preserve("capability-block")
            with contextlib.suppress(BottleError):
                stop_bottle(state, status="blocked", notify=notify)
            notify(f"{state.slug} is blocked: it wants {', '.join(wants)}; `claude-bottle requests` shows why")
            return
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

    # A signal the invoker chose to ignore stays ignored (`nohup claude-bottle start ...` survives a hangup).
    sigs = [sig for sig in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(sig) is not signal.SIG_IGN]
    old = {sig: signal.signal(sig, handler) for sig in sigs}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def attach_bottle(state: StateDir, notify: Notify = _quiet) -> int:
    """This terminal on claude in a running bottle; claude is started first (continuing the bottle's
    session, if it has one) when none runs. When claude ends while attached, its end is recorded: a
    non-zero exit is a crash (preserved, snapshotted); the bottle itself stays up until `stop`."""
    from claude_bottle.bottle import Bottle

    record = state.read_whole()
    if record.status != "running":
        raise BottleError(f"{state.slug} is {record.status}: `claude-bottle resume {state.slug}` starts it again")
    bottle = Bottle.recorded(state, record=record)
    backend = get_bottle_backend(record.backend)
    if not session_running(backend, state):
        resume = state.resumable(record)
        start_session(
            backend, state, claude_argv(bottle.agent, prompt=None, session_id=record.session_id, resume=resume)
        )
    rc = backend.exec(state=state, argv=attach_argv(), tty=True, interactive=True, env=terminal_env())
    if session_running(backend, state):
        return rc  # detached again: claude goes on
    code = read_exit_code(backend, state)
    if code not in NORMAL_ENDS:
        state.preserve_crash(f"claude exited with {code}")
        notify(f"claude exited with {code}: {state.slug} is kept as crashed; `claude-bottle resume {state.slug}`")
    else:
        notify(f"claude ended; {state.slug} still runs: `claude-bottle stop {state.slug}` when done")
    return code


# -- into a running bottle ----------------------------------------------------------------------------------
def exec_in(state: StateDir, argv: Sequence[str], *, tty: bool, interactive: bool, workdir: str | None = None) -> int:
    """A command in the bottle as the agent (a shell when argv is a shell)."""
    record = state.read_whole()
    if record.status != "running":
        raise BottleError(f"{state.slug} is {record.status}: `claude-bottle resume {state.slug}` starts it again")
    return get_bottle_backend(record.backend).exec(
        state=state, argv=argv, tty=tty, interactive=interactive, workdir=workdir
    )


def logs_of(state: StateDir, *, follow: bool, sink: Callable[[bytes], None]) -> int:
    return get_bottle_backend(state.read_whole().backend).logs(state=state, follow=follow, sink=sink)


def elsewhere(state: StateDir) -> bool:
    """Does the bottle keep its log and workspace away from this machine while it runs?"""
    try:
        return get_bottle_backend(state.read_whole().backend).elsewhere(state)
    except BottleError:
        return False


def bring_home(state: StateDir) -> str | None:
    """A running bottle's log, requests, transcripts and workspace, brought into its state dir now where
    its backend keeps them elsewhere (a remote engine, a cluster). Returns why it could not (the engine does
    not answer): what the last trip brought stays, and the caller says so."""
    record = state.read_whole()
    backend = get_bottle_backend(record.backend)
    if record.status != "running" and not backend.elsewhere(state):
        return None  # a stop brought everything home
    try:
        backend.sync(state)  # (a stopped one: what its stop could not bring, if anything is left)
    except BottleError as exc:
        return str(exc)
    return None


# -- grants -------------------------------------------------------------------------------------------------
def grant_egress(state: StateDir, rules: Sequence[Rule], *, revoke: bool = False) -> list[Rule]:
    """Add (or remove) live egress grants. The guard re-reads its policy file within half a second, so a
    running bottle changes policy without a restart; grants.json keeps them for the bottle's next generation."""
    from claude_bottle.bottle import Bottle
    from claude_bottle.guard.inputs import rewrite_policy

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
    from claude_bottle.egress.audit import append_chained

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


# -- every backend ------------------------------------------------------------------------------------------
def doctor_checks(base_images: Sequence[str] = ()) -> list[tuple[str, list[Check]]]:
    """Each known backend's checks (a backend that cannot load says so as a failed check), for the base
    images a manifest names."""
    out = []
    for name in known_backend_names():
        try:
            checks = get_bottle_backend(name).doctor(base_images)
        except BottleError as exc:
            checks = [Check(f"{name} backend", False, str(exc))]
        out.append((name, checks))
    return out


def host_checks() -> list[Check]:
    """What keeps git on this machine from reading a bottle's tree: a bottle user nobody is, and git's
    ownership check not turned off (`safe.directory = *` trusts every repository, whoever owns it)."""
    import subprocess

    from claude_bottle.runtime import bottle_uid

    out = []
    try:
        uid = bottle_uid()
        out.append(Check("bottle user", True, f"uid {uid}, no account on this host"))
    except BottleError as exc:
        out.append(Check("bottle user", False, str(exc), "set CLAUDE_BOTTLE_AGENT_UID to a free uid"))
    try:
        got = subprocess.run(
            ["git", "config", "--show-origin", "--get-all", "safe.directory"],
            capture_output=True, text=True, timeout=10, check=False, cwd="/",
        )  # fmt: skip
        values = got.stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        values = []
    star = [v for v in values if v.rstrip().endswith("\t*") or v.rstrip().endswith(" *")]
    if star:
        where = star[0].split("\t", 1)[0].removeprefix("file:")
        out.append(
            Check(
                "git ownership check",
                False,
                f"safe.directory = * in {where}: git here reads every repository, a bottle's included",
                f"remove that line ({where}); trust single folders by name instead",
            )
        )
    else:
        out.append(Check("git ownership check", True, "on: git refuses repositories another user owns"))
    return out


def cleanup_plans() -> list[BottleCleanupPlan]:
    """What cleanup would remove, per backend (changing nothing)."""
    return [get_bottle_backend(name).prepare_cleanup() for name in known_backend_names()]


def run_cleanup(plans: Sequence[BottleCleanupPlan], report: Report) -> list[str]:
    """Each backend removes what its plan lists, best effort; one line per failure comes back."""
    failures: list[str] = []
    for plan in plans:
        failures += get_bottle_backend(plan.backend).cleanup(plan, report=report)
    return failures


# -- capability requests (SPEC S4) ------------------------------------------------------------------------
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
    from claude_bottle.egress.policy import Rule
    from claude_bottle.guard.inputs import rewrite_policy

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
