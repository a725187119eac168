"""`claude-bottle grant SLUG`: change a running bottle's egress policy, no restart (`--egress`), or answer
its capability requests (`--request ID` / `--all`): a host becomes reachable at once; a package is built
into the bottle's image and a blocked bottle resumes its session with it. `claude-bottle deny` refuses."""

from __future__ import annotations

import argparse
from typing import Any

from claude_bottle.cli._common import err, is_tty, out, progress, run_agent, slug_arg, state_for, tell
from claude_bottle.errors import BottleError


def register(sub: Any) -> None:
    p = sub.add_parser("grant", help="grant (or --revoke) egress to a bottle, live; or answer its requests")
    slug_arg(p)
    p.add_argument(
        "--egress",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="host pattern to allow, as in egress.allow (repeatable)",
    )
    p.add_argument("--private", action="store_true", help="let these names resolve to private addresses")
    p.add_argument("--revoke", action="store_true", help="take the given grants back")
    p.add_argument("--request", action="append", default=[], metavar="ID", help="grant this request (repeatable)")
    p.add_argument("--all", action="store_true", help="grant every pending request of the bottle")
    p.add_argument("--save", action="store_true", help="also add what is granted to the bottle in its manifest")
    p.add_argument("--detach", "-d", action="store_true", help="resume a blocked bottle in the background")
    p.set_defaults(run=run)
    d = sub.add_parser("deny", help="refuse a bottle's capability requests (it is told why)")
    slug_arg(d)
    d.add_argument("--request", action="append", default=[], metavar="ID", help="refuse this request (repeatable)")
    d.add_argument("--all", action="store_true", help="refuse every pending request of the bottle")
    d.add_argument("--reason", default="", metavar="TEXT", help="what the agent is told")
    d.add_argument("--detach", "-d", action="store_true", help="resume a blocked bottle in the background")
    d.set_defaults(run=run_deny)


def run(args: argparse.Namespace) -> int:
    if args.request or args.all:
        if args.egress or args.revoke:
            raise BottleError("--request/--all answer requests; --egress/--revoke change grants: one at a time")
        return answer(args, grant=True)
    from pydantic import ValidationError

    from claude_bottle.manifest import EgressRule
    from claude_bottle.work.requests import grant_egress

    if not args.egress:
        raise BottleError("nothing to grant: pass --egress HOST[:PORT] (repeatable), or --request ID / --all")
    if args.save and (args.revoke or args.private):
        raise BottleError(
            "--save adds plain hosts to the manifest: for --revoke or --private, edit egress.allow by hand "
            "(then `claude-bottle trust`)"
        )
    rules = []
    for spec in args.egress:
        try:
            rule = EgressRule.model_validate(spec)
        except ValidationError as exc:
            raise BottleError(f"--egress {spec!r}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
        rules.append((rule.model_copy(update={"private": True}) if args.private else rule).rule())
    state = state_for(args)
    grants = grant_egress(state, rules, revoke=args.revoke)
    if args.save:
        from claude_bottle.manifest.edit import save_grants_to_manifest

        where = save_grants_to_manifest(state, [f"egress:{r.label()}" for r in rules])
        err.print(f"saved {', '.join(r.label() for r in rules)} to {where}")
    out.print(state.slug)
    err.print(
        ("revoked " if args.revoke else "granted ")
        + ", ".join(r.label() for r in rules)
        + f"; live grants now: {', '.join(g.label() for g in grants) or 'none'}"
    )
    return 0


def run_deny(args: argparse.Namespace) -> int:
    return answer(args, grant=False)


def answer(args: argparse.Namespace, *, grant: bool) -> int:
    from claude_bottle.work.requests import answer_requests, choose_requests, continuation_prompt
    from claude_bottle.work.start import resume_bottle

    state = state_for(args)
    chosen = choose_requests(state, args.request, every=args.all)
    reason = getattr(args, "reason", "")
    answered = answer_requests(state, chosen, grant=grant, reason=reason, private=getattr(args, "private", False))
    if grant and getattr(args, "save", False):
        from claude_bottle.manifest.edit import save_grants_to_manifest

        where = save_grants_to_manifest(state, answered.labels)
        err.print(f"saved {', '.join(answered.labels)} to {where}")
    out.print(state.slug)
    err.print(("granted " if grant else "denied ") + ", ".join(answered.labels))
    record = state.read()
    if not answered.packages or record.status != "blocked" or record.wants:
        if record.status == "blocked" and record.wants:
            err.print(f"{state.slug} still waits for: {', '.join(record.wants)}")
        return 0
    # Every package it asked for is answered: rebuild (with the granted ones) and continue its session.
    started = resume_bottle(state, progress=progress, notify=tell)
    prompt = continuation_prompt(answered, granted=grant, reason=reason)
    detach = args.detach or record.run_mode == "detached"
    interactive = record.run_mode == "interactive" and is_tty() and not detach
    return run_agent(started, prompt=prompt, detach=detach, resume=True, interactive_prompt=interactive)
