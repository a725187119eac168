"""`claude-bottle attach SLUG`: an interactive claude in a running bottle."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import is_tty, slug_arg, state_for


def register(sub: Any) -> None:
    p = sub.add_parser("attach", help="attach this terminal to claude in a running bottle")
    slug_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..backend import get_bottle_backend
    from ..lifecycle import claude_argv
    from ..manifest import AgentSpec

    state = state_for(args)
    record = state.read()
    agent = AgentSpec.model_validate(record.manifest.get("agent", {}))
    backend = get_bottle_backend(record.backend)
    return backend.exec(state=state, argv=claude_argv(agent, prompt=None), tty=is_tty(), interactive=True)
