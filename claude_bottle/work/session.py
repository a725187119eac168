"""Claude's session in a bottle, driven through its backend: started in tmux (detached, or to be attached),
asked whether it still runs, and its exit code read when it ends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from claude_bottle.bottle.state import StateDir
from claude_bottle.errors import BottleError

if TYPE_CHECKING:
    from claude_bottle.backend import BottleBackend

from claude_bottle.bottle.claude_code import (
    EXIT_FILE,
    HOST_EXIT_FILE,
    RUN_LOG,
    SESSION,
    UNREADABLE_EXIT,
    parse_exit_code,
    run_end,
)

__all__ = ["read_exit_code", "session_running", "start_session"]


def start_session(backend: BottleBackend, state: StateDir, argv: list[str], *, log: bool = False) -> None:
    """claude in a detached tmux session inside the bottle, so a terminal can attach and detach at will."""
    env = ["-e", f"BOTTLE_RUN_LOG={RUN_LOG}"] if log else []
    (state.claude_home / HOST_EXIT_FILE).unlink(missing_ok=True)  # an earlier run's end is not this one's
    tmux = ["tmux", "-u", "new-session", "-d", "-s", SESSION, "-x", "200", "-y", "50", *env, "--", "bottle-run", *argv]
    rc = backend.exec(state=state, argv=tmux, tty=False, interactive=False)
    if rc != 0:
        raise BottleError(f"could not start claude in {state.slug} (tmux exit {rc})")


def session_running(backend: BottleBackend, state: StateDir) -> bool:
    if run_end(state) is not None:
        # claude has ended (its exit is written before its pane closes): a session still closing, as under
        # gVisor when the attached client returns first, is not one to come back to.
        return False
    code, _ = backend.exec_output(state=state, argv=["tmux", "has-session", "-t", SESSION])
    return code == 0


def read_exit_code(backend: BottleBackend, state: StateDir) -> int:
    rc = run_end(state)
    if rc is None:  # the host file is missing or unreadable: ask the container's copy
        code, out = backend.exec_output(state=state, argv=["cat", EXIT_FILE])
        rc = parse_exit_code(out) if code == 0 else None
    return UNREADABLE_EXIT if rc is None else rc
