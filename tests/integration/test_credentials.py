"""Credential routes: the agent holds a placeholder, the guard adds the real credential upstream."""

from __future__ import annotations

import base64
from typing import Any

from .conftest import TEST_GITHUB_TOKEN, TEST_KEY, Cli, Internet


def header(request: dict[str, Any], name: str) -> str | None:
    return next((v for k, v in request["headers"].items() if k.lower() == name), None)


def test_anthropic_route_adds_the_real_key(cli: Cli, bottle: str, internet: Internet) -> None:
    rc, out = cli.sh(
        bottle,
        "curl -sS -m 20 -H \"x-api-key: $ANTHROPIC_API_KEY\" -H 'content-type: application/json' "
        '-d \'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"ping me"}]}\' '
        "$ANTHROPIC_BASE_URL/v1/messages",
    )
    assert rc == 0 and "FAKE-UPSTREAM reply to: ping me" in out, out
    seen = [r for r in internet.requests("anthropic") if r["path"].startswith("/v1/messages")]
    assert seen and header(seen[-1], "x-api-key") == TEST_KEY
    assert "placeholder" not in str(seen[-1]["headers"])
    route = cli.wait_line(bottle, kind="route", route="anthropic", decision="allow")
    assert cli.end_of(bottle, route)["status"] == 200
    assert TEST_KEY not in str(cli.audit(bottle))


def test_git_clone_through_the_github_route(cli: Cli, bottle: str, internet: Internet) -> None:
    rc, out = cli.sh(bottle, "cd /tmp && rm -rf r && git clone -q http://github.test/repo.git r && cat r/README")
    assert rc == 0 and "cloned through the guard" in out, out
    auths = {header(r, "authorization") for r in internet.requests("github") if "repo.git" in r["path"]}
    assert f"Basic {base64.b64encode(f'x-access-token:{TEST_GITHUB_TOKEN}'.encode()).decode()}" in auths
    rc, out = cli.sh(bottle, "git config --get-regexp 'url\\..*' ; env | grep -c GITHUB_TOKEN")
    assert TEST_GITHUB_TOKEN not in out


def test_claude_code_reaches_its_upstream_only_through_the_route(cli: Cli, bottle: str, internet: Internet) -> None:
    before = len(internet.requests("anthropic"))
    rc, out = cli.sh(
        bottle, "cd /workspace && timeout 120 claude -p 'hello from the bottle' --dangerously-skip-permissions"
    )
    assert rc == 0, out
    assert "FAKE-UPSTREAM reply to:" in out
    new = [r for r in internet.requests("anthropic")[before:] if r["path"].startswith("/v1/messages")]
    assert new, "Claude Code sent nothing to the upstream"
    for r in new:
        assert header(r, "x-api-key") == TEST_KEY
    assert all(ln["decision"] == "allow" for ln in cli.audit(bottle) if ln.get("route") == "anthropic")
