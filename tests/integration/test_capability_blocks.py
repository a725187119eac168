"""Capability blocks on the real engine with the real Claude Code (issue 13): the fake Messages API makes
claude run `bottle-capability request apt:jq`; the bottle blocks; `grant --request` rebuilds the image
with jq and resumes the same session; an egress request is granted live, another denied."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import STATE, TEST_KEY, Cli, Internet, user_project


@pytest.fixture(scope="module")
def bcli(tmp_path_factory: pytest.TempPathFactory, internet: Internet) -> Iterator[Cli]:
    with user_project(tmp_path_factory, internet, "capability") as c:
        yield c


def first_pending(c: Cli, slug: str) -> dict[str, Any]:
    """The bottle's one pending request, waiting (50 ms polls, 15 s at most) for the guard to record it."""
    for _ in range(300):
        pending = json.loads(c.run("requests", slug, "--json", check=True).stdout)
        if pending:
            (req,) = pending
            return dict(req)
        time.sleep(0.05)
    raise AssertionError(f"no pending request in {slug}")


def messages(internet: Internet) -> list[dict[str, Any]]:
    return [r for r in internet.requests("anthropic") if r["path"].startswith("/v1/messages")]


def test_a_package_request_blocks_then_a_grant_rebuilds_and_resumes_the_session(bcli: Cli, internet: Internet) -> None:
    before = len(messages(internet))
    r = bcli.run(
        "start", "claude", "--prompt",
        "CAP-MARKER TOOL: bottle-capability request apt:jq --reason 'to parse the JSON files'",
        timeout=600,
    )  # fmt: skip
    slug = r.stdout.strip().splitlines()[0]
    assert "blocked" in r.stderr and "apt:jq" in r.stderr, r.stderr
    row = bcli.ls()[slug]
    assert row["status"] == "blocked (wants apt:jq)" and row["preserved"] == "capability-block"
    pending = json.loads(bcli.run("requests", "--json", check=True).stdout)
    (req,) = pending
    assert (req["slug"], req["kind"], req["name"], req["reason"]) == (slug, "apt", "jq", "to parse the JSON files")
    tool_results = json.dumps(messages(internet)[before:])
    assert "stops this bottle now" in tool_results  # claude saw the guard's answer before it was stopped
    # The grant: rebuilt with jq in a last layer, the same session continued.
    before = len(messages(internet))
    t0 = time.monotonic()
    r = bcli.run("grant", slug, "--request", req["id"], timeout=900)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    sent = json.dumps(messages(internet)[before:])
    assert "CAP-MARKER" in sent and "granted apt:jq" in sent  # the earlier conversation and the continuation
    assert all(
        next(v for k, v in q["headers"].items() if k.lower() == "x-api-key") == TEST_KEY
        for q in messages(internet)[before:]
    )
    state = bcli.home / STATE / slug
    record = json.loads((state / "bottle.json").read_text())
    assert record["granted_packages"] == {"apt": ["jq"]} and record["rebuilt"] is True
    assert (state / "Dockerfile").read_text().startswith("# rebuilt: granted packages (apt: jq)")
    assert bcli.ls()[slug]["preserved"] == "rebuilt"
    assert "rebuilt Dockerfile" in bcli.run("cleanup", "--dry-run", check=True).stdout
    bcli.run("resume", slug, "--detach", check=True)
    rc, out = bcli.sh(slug, "jq --version")
    assert rc == 0 and out.startswith("jq-"), out
    bcli.run("stop", slug, check=True)
    (state.parent.parent / "grant-seconds").write_text(f"{took:.1f}\n")  # for the note: grant to answered


def test_an_egress_request_is_granted_live_and_another_denied(bcli: Cli) -> None:
    slug = bcli.start()
    try:
        asking = subprocess.Popen(
            bcli.argv("exec", slug, "--", "bottle-capability", "request", "egress:forbidden.test:80",
                      "--reason", "the docs live there", "--wait", "60"),
            cwd=bcli.cwd, env=bcli.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        req = first_pending(bcli, slug)
        assert req["name"] == "forbidden.test:80"
        _, out = bcli.sh(slug, "curl -sS -m 5 -o /dev/null -w '%{http_code}' http://forbidden.test/")
        assert out.strip() == "403"  # the control: refused until granted
        bcli.run("grant", slug, "--request", req["id"], "--private", check=True)  # a test host: private address
        out, err = asking.communicate(timeout=60)
        assert asking.returncode == 0 and "granted egress:forbidden.test:80" in out, out + err
        _rc, out = bcli.sh(slug, "curl -sS -m 10 -o /dev/null -w '%{http_code}' http://forbidden.test/")
        assert out.strip() == "200", out
        line = bcli.wait_line(slug, kind="capability", answer="grant")
        assert line["capability"] == "egress:forbidden.test:80"
        # Another, denied: the agent is told why and exits 1.
        denied = subprocess.Popen(
            bcli.argv("exec", slug, "--", "bottle-capability", "request", "egress:private.test:443", "--wait", "60"),
            cwd=bcli.cwd, env=bcli.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        first_pending(bcli, slug)
        bcli.run("deny", slug, "--all", "--reason", "not for this task", check=True)
        out, err = denied.communicate(timeout=60)
        assert denied.returncode == 1 and "not for this task" in out, out + err
        # Bad requests: refused with one clear line, exit 64, nothing reaches a shell.
        _, out = bcli.sh(slug, "bottle-capability request 'apt:jq; touch /tmp/pwned'; echo rc=$?")
        assert "rc=64" in out and "is not an apt package name" in out
        _, out = bcli.sh(slug, "if [ -e /tmp/pwned ]; then echo made; else echo absent; fi")
        assert out.strip() == "absent", out
    finally:
        bcli.run("stop", slug, "--rm")


def test_ask_mode_holds_a_refused_connection_until_granted_and_refuses_at_the_timeout(
    tmp_path_factory: pytest.TempPathFactory, internet: Internet
) -> None:
    ask = "[bottles.default.egress]\nask = true\nask_timeout = 8\n"
    with user_project(
        tmp_path_factory, internet, "askmode", edit=lambda t: t.replace("[bottles.default.egress]\n", ask)
    ) as c:
        _ask_mode(c, internet)


def _ask_mode(c: Cli, internet: Internet) -> None:
    slug = c.start()
    try:
        curl = subprocess.Popen(
            c.argv("exec", slug, "--", "curl", "-sS", "-m", "30", "-w", " %{http_code}", "http://forbidden.test/"),
            cwd=c.cwd, env=c.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        req = first_pending(c, slug)
        assert req["name"] == "forbidden.test:80" and req["reason"].startswith("ask mode")
        assert curl.poll() is None  # held while the operator decides
        c.run("grant", slug, "--request", req["id"], "--private", check=True)
        out, err = curl.communicate(timeout=30)
        assert out.endswith(" 200"), out + err
        # Nobody answers: refused when the wait runs out, with that reason.
        t0 = time.monotonic()
        _, out = c.sh(slug, "curl -sS -m 30 -w ' %{http_code}' http://private.test:8080/")
        assert out.endswith(" 403") and "no answer within 8s" in out, out
        assert 7 < time.monotonic() - t0 < 25
    finally:
        c.run("stop", slug, "--rm")
