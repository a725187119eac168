"""`claude-bottle verify SLUG` and `claude-bottle report SLUG`: is a bottle's record intact, and what did its
runs do (issue 15, item 5)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from rich.markup import escape

from claude_bottle.cli._common import err, out, slug_arg, state_for
from claude_bottle.errors import EXIT_USER
from claude_bottle.terminal import escape_controls


def register(sub: Any) -> None:
    v = sub.add_parser("verify", help="check a bottle's audit chain: says where a line was edited or removed")
    slug_arg(v)
    v.set_defaults(run=run_verify)
    r = sub.add_parser("report", help="a run's summary: agent, image, policy, egress by host, requests, grants")
    slug_arg(r)
    r.add_argument("--json", action="store_true", help="one JSON object")
    r.set_defaults(run=run_report)


def run_verify(args: argparse.Namespace) -> int:
    from claude_bottle.guard.audit import verify_chain
    from claude_bottle.work.upkeep import bring_home

    state = state_for(args)
    why = bring_home(state)
    if why:
        err.print(f"[yellow]verifying the log as last brought home[/]: {escape(why)}")
    if not state.audit_path.exists():
        err.print(f"{state.slug} has no audit log")
        return EXIT_USER
    lines, unchained, problems = verify_chain(state.audit_path)
    if problems:
        for p in problems[:5]:
            out.print(f"BROKEN: {p}", markup=False, highlight=False)
        err.print(f"{state.slug}: the audit chain breaks ({lines} lines): the record was changed after it was written")
        return EXIT_USER
    note = f" ({unchained} written before chaining began, not verifiable)" if unchained else ""
    out.print(f"intact: {lines} lines, each naming the hash of the one before{note}", markup=False, highlight=False)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from claude_bottle.bottle.capabilities import decisions, read_requests
    from claude_bottle.guard.audit import verify_chain
    from claude_bottle.guard_inputs.files import load_grants
    from claude_bottle.work.upkeep import bring_home

    state = state_for(args)
    why = bring_home(state)
    if why:
        err.print(f"[yellow]reporting what was last brought home[/]: {escape(why)}")
    record = state.read_whole()
    by_host: dict[str, Counter[str]] = {}
    kinds: Counter[str] = Counter()
    if state.audit_path.exists():
        with state.audit_path.open("rb") as f:
            for raw in f:
                try:
                    ln = json.loads(raw)
                except ValueError:
                    continue
                kinds[str(ln.get("kind", "?"))] += 1
                if ln.get("decision") in ("allow", "deny") and ln.get("host"):
                    by_host.setdefault(str(ln["host"]), Counter())[str(ln["decision"])] += 1
        lines, _unchained, problems = verify_chain(state.audit_path)
    else:
        lines, problems = 0, []
    answered = decisions(state)
    requests = [
        {**r.as_json(), "answer": answered.get(r.id, {}).get("decision", "pending")} for r in read_requests(state)
    ]
    grants = [g.label() for g in load_grants(state)]
    data = {
        "slug": state.slug,
        "agent": record.agent,
        "bottle": record.bottle,
        "backend": record.backend,
        "status": record.status,
        "generation": record.generation,
        "created": record.created,
        "images": record.images,
        "ran_with": record.ran_with,
        "egress": {h: dict(c) for h, c in sorted(by_host.items())},
        "audit": {"lines": lines, "intact": not problems, "kinds": dict(kinds)},
        "requests": requests,
        "grants": grants,
        "granted_packages": record.granted_packages,
        **_work(state, record.worktree),
    }
    if args.json:
        out.print_json(json.dumps(data))
        return 0
    w = out.print
    w(f"{state.slug}: agent {record.agent} in bottle {record.bottle} on {record.backend}, {record.status}, "
      f"generation {record.generation}", markup=False, highlight=False)  # fmt: skip
    for role, image in sorted(record.images.items()):
        w(f"  image {role}: {image}", markup=False, highlight=False)
    for what, digest in sorted(record.ran_with.items()):
        w(f"  {what}: sha256 {digest}", markup=False, highlight=False)
    w(f"  audit: {lines} lines, chain {'intact' if not problems else 'BROKEN: ' + problems[0]}", markup=False)
    for host, c in sorted(by_host.items()):
        w(f"  egress {host}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())), markup=False, highlight=False)
    for r in requests:
        w(f"  request {r['id']} {r['kind']}:{r['name']}: {r['answer']}", markup=False, highlight=False)
    for g in grants:
        w(f"  grant: {g}", markup=False, highlight=False)
    if data["commits"] is not None:
        w(f"  branch {data['branch']}: {len(data['commits'])} commits; {data['diffstat'] or 'no changes'}",
          markup=False, highlight=False)  # fmt: skip
        for c in data["commits"]:
            w(f"    {c['id'][:12]} {escape_controls(c['subject'])}", markup=False, highlight=False)
    return 0


def _work(state: Any, info: dict[str, Any] | None) -> dict[str, Any]:
    """Worktree mode: the bottle's commits and a diffstat of all it changed (committed or not)."""
    if not info:
        return {"commits": None}
    from claude_bottle.git.worktree import WorktreeError, reading

    try:
        with reading(state) as w:
            stat = w.git("diff", "--shortstat", w.base, w.tree).stdout.decode(errors="replace").strip()
    except WorktreeError as exc:
        return {"commits": [], "branch": info.get("branch"), "diffstat": f"unreadable: {exc}"}
    return {
        "commits": [{"id": oid, "subject": subject} for oid, subject in w.commits],
        "branch": w.branch,
        "base": w.base,
        "diffstat": stat,
        "uncommitted": w.uncommitted,
    }
