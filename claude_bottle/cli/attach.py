"""`claude-bottle attach SLUG`: this terminal on claude in a running bottle (started there if need be)."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import BottleError
from ._common import err, is_tty, slug_arg, state_for


def register(sub: Any) -> None:
    p = sub.add_parser("attach", help="attach this terminal to claude in a running bottle (Ctrl-b d detaches)")
    slug_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..backend import get_bottle_backend
    from ..lifecycle import SESSION, claude_argv, start_session
    from ..manifest import AgentSpec

    if not is_tty():
        raise BottleError("attach needs a terminal: run it from one (or use `claude-bottle logs SLUG`)")
    state = state_for(args)
    record = state.read()
    if record.status != "running":
        raise BottleError(f"{state.slug} is {record.status}: `claude-bottle resume {state.slug}` starts it again")
    backend = get_bottle_backend(record.backend)
    running, _ = backend.exec_output(state=state, argv=["tmux", "has-session", "-t", SESSION])
    if running != 0:
        # No claude yet (a bare --detach), or it ended: start one, continuing the bottle's session if it has one.
        agent = AgentSpec.model_validate(record.manifest.get("agent", {}))
        projects = state.claude_home / "projects"
        resume = bool(record.session_id) and any(projects.glob(f"*/{record.session_id}.jsonl"))
        argv = claude_argv(agent, prompt=None, session_id=record.session_id, resume=resume)
        start_session(backend, state, argv)
    err.print("[dim]Ctrl-b d detaches (claude keeps running)[/]")
    return backend.exec(state=state, argv=["tmux", "attach-session", "-t", SESSION], tty=True, interactive=True)
