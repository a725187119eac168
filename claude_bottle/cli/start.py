"""`claude-bottle start AGENT`: build, start and wait for a bottle; then run claude or detach."""

from __future__ import annotations

import argparse
import json
from typing import Any

from claude_bottle.cli._common import add_manifest_arg, check_terminal, err, load, out, progress, run_agent


def register(sub: Any) -> None:
    p = sub.add_parser("start", help="start a bottle for an agent")
    p.add_argument("agent", metavar="AGENT", help="agent name from the manifest")
    p.add_argument("--detach", "-d", action="store_true", help="leave the bottle running and return")
    p.add_argument("--prompt", "-p", metavar="TEXT", help="run claude headless with this prompt")
    p.add_argument(
        "--backend", metavar="NAME", help="backend to use (default: manifest, then CLAUDE_BOTTLE_BACKEND, then docker)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON object instead of the slug")
    modes = p.add_mutually_exclusive_group()
    modes.add_argument(
        "--worktree",
        action="store_const",
        const="worktree",
        dest="workspace_mode",
        help="work in a checkout of its own on branch claude-bottle/SLUG (the workspace must be a git repository; "
        "the default for one)",
    )
    modes.add_argument(
        "--copy",
        action="store_const",
        const="copy",
        dest="workspace_mode",
        help="work in a copy of its own; `claude-bottle apply SLUG` brings it home (the default for a workspace "
        "that is not a git repository)",
    )
    modes.add_argument(
        "--mount",
        action="store_const",
        const="mount",
        dest="workspace_mode",
        help="let the agent write the workspace itself (then git, an editor or a shell prompt run there may run "
        "what it writes)",
    )
    p.add_argument(
        "--context",
        metavar="NAME",
        help="the Docker context to run on (docker context ls; default: the manifest's, then DOCKER_HOST, "
        "then the current one); the bottle keeps it",
    )
    p.add_argument(
        "--isolation",
        choices=("container", "gvisor"),
        help="what the agent runs under: container (the host's kernel) or gvisor (gVisor's user-space kernel, "
        "runsc); default: the bottle's isolation",
    )
    add_manifest_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from claude_bottle.work.inventory import leftovers_hint
    from claude_bottle.work.start import start_bottle

    manifest = load(args)
    prompt = args.prompt or manifest.agent(args.agent).prompt
    check_terminal(prompt=prompt, detach=args.detach)
    hint = leftovers_hint()
    if hint:
        err.print(f"[dim]{hint}[/]")
    started = start_bottle(
        manifest,
        args.agent,
        backend_flag=args.backend,
        workspace_mode=args.workspace_mode,
        context=args.context,
        isolation=args.isolation,
        progress=(lambda _line: None) if args.json else progress,
        show_plan=None if args.json else (lambda plan: err.print(plan.line(), markup=False)),
    )
    if args.json:
        out.print_json(
            json.dumps(
                {
                    "slug": started.slug,
                    "backend": started.backend.name,
                    "status": "running",
                    "state_dir": str(started.state.path),
                }
            )
        )
    else:
        out.print(started.slug)
    return run_agent(started, prompt=prompt, detach=args.detach, resume=False)
