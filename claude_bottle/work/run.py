"""Claude in a bottle: headless, interactive (through the screen filter) or detached; attach, exec and logs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from claude_bottle.backend import (
    get_bottle_backend,
)
from claude_bottle.bottle.capabilities import pending
from claude_bottle.bottle.claude_code import (
    NORMAL_ENDS,
    RUN_END_FILE,
    attach_argv,
    claude_argv,
    terminal_env,
)
from claude_bottle.bottle.state import StateDir, process_started, write_private
from claude_bottle.errors import BottleError
from claude_bottle.work.session import read_exit_code, session_running, start_session

if TYPE_CHECKING:
    pass
from claude_bottle.work.common import Notify, Started, no_interrupts, say_nothing, terminations_as_exit
from claude_bottle.work.stop import stop_bottle


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
    notify: Notify = say_nothing,
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
        with terminations_as_exit():
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
    with contextlib.suppress(OSError):  # the watcher's word of the end (notify/watch.py)
        write_private(state.path / RUN_END_FILE, f"{rc}\n")
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


def _finish(started: Started, *, abnormal: str | None, notify: Notify = say_nothing) -> None:
    """End a foreground run: preserve it when it ended badly, then stop it. Each step is tried on its own:
    a tree the agent made that cannot be copied must not leave the bottle running or unpreserved."""
    state = started.state
    wants = [r.label for r in pending(state) if r.package]
    with no_interrupts():
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


def attach_bottle(state: StateDir, notify: Notify = say_nothing) -> int:
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
