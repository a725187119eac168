"""Git-aware egress (issue 15, item 3): pushes on the GitHub route are judged from their ref-update
commands before a byte is forwarded."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.guard.audit import AuditLog
from claude_bottle.guard.config import Route, Secrets
from claude_bottle.guard.dlp import Scanner
from claude_bottle.guard.gitpush import BadPush, RefUpdate, commands_end, judge_push, parse_commands, repo_of
from claude_bottle.guard.policy import PolicyFile
from claude_bottle.guard.proxy import Guard

from .guardkit import send

OLD, NEW, ZERO = "a" * 40, "b" * 40, "0" * 40
SLUG = "claude-abcde"
TOKEN = "ghp_REALTOKEN" + "x" * 30


def pkt(line: str) -> bytes:
    data = line.encode()
    return f"{len(data) + 4:04x}".encode() + data


def commands(*refs: tuple[str, str, str]) -> bytes:
    out = b""
    for i, (old, new, ref) in enumerate(refs):
        out += pkt(f"{old} {new} {ref}" + ("\0report-status side-band-64k\n" if i == 0 else "\n"))
    return out + b"0000"


def test_parse_and_judge() -> None:
    body = commands((OLD, NEW, f"refs/heads/claude-bottle/{SLUG}"), (OLD, NEW, "refs/heads/main")) + b"PACK..."
    end = commands_end(body)
    assert end is not None and body[end:] == b"PACK..."
    ups = parse_commands(body[:end])
    assert [u.ref for u in ups] == [f"refs/heads/claude-bottle/{SLUG}", "refs/heads/main"]
    verdicts = judge_push(ups, slug=SLUG, patterns=(), repo="acme/app", repos=())
    assert [(ok, why) for _u, ok, why in verdicts] == [
        (True, "the bottle's own branch"),
        (False, f"only refs/heads/claude-bottle/{SLUG} may be pushed, not refs/heads/main"),
    ]
    assert commands_end(body[:10]) is None  # read more


@pytest.mark.parametrize(
    ("update", "patterns", "repos", "ok"),
    [
        (RefUpdate(OLD, NEW, "refs/heads/claude-bottle/other-zzzzz"), (), (), False),  # another bottle's
        (RefUpdate(OLD, ZERO, f"refs/heads/claude-bottle/{SLUG}"), (), (), False),  # a deletion, even its own
        (RefUpdate(OLD, NEW, "refs/tags/v1"), (), (), False),
        (RefUpdate(OLD, NEW, "refs/tags/v1"), ("refs/tags/v*",), (), True),
        (RefUpdate(OLD, ZERO, "refs/heads/tmp/x"), ("delete:refs/heads/tmp/*",), (), True),
        (RefUpdate(OLD, NEW, "refs/heads/feature/x"), ("refs/heads/feature/*",), (), True),
        (RefUpdate(OLD, NEW, f"refs/heads/claude-bottle/{SLUG}"), (), ("acme/app",), True),
        (RefUpdate(OLD, NEW, f"refs/heads/claude-bottle/{SLUG}"), (), ("acme/other",), False),
    ],
)
def test_each_rule(update: RefUpdate, patterns: tuple[str, ...], repos: tuple[str, ...], ok: bool) -> None:
    ((_u, got, _why),) = judge_push([update], slug=SLUG, patterns=patterns, repo="acme/app", repos=repos)
    assert got is ok


def test_what_cannot_be_judged_is_refused() -> None:
    with pytest.raises(BadPush):
        parse_commands(pkt("push-cert\0push-cert\n") + b"0000")
    with pytest.raises(BadPush):
        parse_commands(pkt("not a command\n") + b"0000")
    with pytest.raises(BadPush):
        commands_end(b"zz00")
    assert repo_of("/acme/app.git/git-receive-pack") == "acme/app"
    assert repo_of("/acme/app/git-receive-pack?x=1") == "acme/app"
    assert repo_of("/a/b/c/git-receive-pack") is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("push-cert\0push-cert\n", "push certificates are not accepted"),
        (f"{OLD} {NEW}\n", "not a ref-update command"),  # too few fields
        (f"{OLD} {NEW} refs/heads/a b\n", "not a ref-update command"),  # too many
        (f"{OLD}  {NEW} refs/heads/a\n", "not a ref-update command"),  # two spaces are not one
        (f"{OLD} {NEW} refs/heads/a \n", "not a ref-update command"),  # a trailing space is not stripped
        (f"xyz {NEW} refs/heads/a\n", "not a ref-update command"),  # a bad old id alone
        (f"{OLD} xyz refs/heads/a\n", "not a ref-update command"),  # a bad new id alone
        (f"{OLD} {NEW[:39]} refs/heads/a\n", "not a ref-update command"),
    ],
)
def test_each_unjudgeable_command_is_named(line: str, message: str) -> None:
    with pytest.raises(BadPush, match=f"^{message}$"):
        parse_commands(pkt(line) + b"0000")


def test_command_lines_are_read_exactly() -> None:
    (u,) = parse_commands(pkt(f"{OLD} {NEW} refs/heads/x\0report-status\0odd\n") + b"0000")
    assert u.ref == "refs/heads/x"  # only the first NUL starts the capabilities
    (u,) = parse_commands(pkt(f"{OLD} {NEW} refs/heads/endsX\n") + b"0000")
    assert u.ref == "refs/heads/endsX"  # only the newline is stripped
    raw = f"{OLD} {NEW} refs/".encode() + b"\xff\xfe!"
    (u,) = parse_commands(b"%04x" % (len(raw) + 4) + raw + b"0000")
    assert u.ref == "refs/\ufffd\ufffd!"  # bytes that are not UTF-8 are judged, replaced, never dropped
    with pytest.raises(BadPush, match=r"^no ref updates$"):
        parse_commands(b"0000")


def test_pkt_line_framing_is_read_exactly() -> None:
    assert commands_end(b"") is None and commands_end(b"00") is None and commands_end(b"000") is None
    assert commands_end(b"0000") == 4
    assert commands_end(b"00040000PACK") == 8  # an empty pkt-line (length 4) is a line
    with pytest.raises(BadPush, match=r"^bad pkt-line length$"):
        commands_end(b"00030000")
    with pytest.raises(BadPush, match=r"^not a pkt-line$"):
        commands_end(b"zz00")


def test_reasons_name_what_was_refused() -> None:
    tag = RefUpdate(OLD, NEW, "refs/tags/v1")
    ((_, ok, why),) = judge_push([tag], slug=SLUG, patterns=(), repo=None, repos=())
    assert (ok, why) == (False, f"tag refs/tags/v1 is not allowed (only refs/heads/claude-bottle/{SLUG} unless listed)")
    ((_, ok, why),) = judge_push([tag], slug=SLUG, patterns=(), repo=None, repos=("acme/app",))
    assert (ok, why) == (False, "repository ? is not in the bottle's list")
    gone = RefUpdate(OLD, ZERO, "refs/heads/tmp/x")
    ((_, ok, why),) = judge_push([gone], slug=SLUG, patterns=("delete:refs/heads/tmp/*",), repo=None, repos=())
    assert (ok, why) == (True, "deletion listed")


def test_every_update_gets_a_verdict_and_patterns_match_only_what_they_say() -> None:
    ups = [RefUpdate(OLD, ZERO, "refs/heads/keep"), RefUpdate(OLD, NEW, "refs/heads/main"),
           RefUpdate(OLD, NEW, "refs/tags/v2")]  # fmt: skip
    verdicts = judge_push(ups, slug=SLUG, patterns=(), repo="acme/app", repos=("acme/other",))
    assert len(verdicts) == 3 and not any(ok for _u, ok, _w in verdicts)  # none skipped after a refusal
    verdicts = judge_push(ups, slug=SLUG, patterns=("delete:refs/heads/tmp/*",), repo=None, repos=())
    assert len(verdicts) == 3 and not any(ok for _u, ok, _w in verdicts)
    # A deletion pattern allows deleting what it names only; a push pattern never allows another ref.
    verdicts = judge_push(ups, slug=SLUG, patterns=("delete:refs/heads/tmp/*", "refs/heads/feature/*"), repo=None,
                          repos=())  # fmt: skip
    assert [ok for _u, ok, _w in verdicts] == [False, False, False]


def test_the_repository_is_read_from_the_path_alone() -> None:
    assert repo_of("/acme/app.git/git-receive-pack?service=x?y") == "acme/app"


# -- through the guard, on the GitHub credential route ------------------------------------------------
@contextlib.asynccontextmanager
async def github(tmp: Path, seen: list[bytes], **policy: Any):  # type: ignore[no-untyped-def]
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
        seen.append(head + await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    up = await asyncio.start_server(upstream, "127.0.0.1", 0)
    up_port = up.sockets[0].getsockname()[1]
    (tmp / "policy.json").write_text(json.dumps({"bottle": SLUG, "allow": [], **policy}))
    log = AuditLog(tmp / "egress.jsonl", bottle=SLUG)
    route = Route("github", f"http://127.0.0.1:{up_port}", "authorization", f"Basic {TOKEN}", TOKEN)
    guard = Guard(PolicyFile(tmp / "policy.json"), log, Secrets({"github": route}, (), Scanner(secrets=[TOKEN])))
    server = await guard.serve("127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        up.close()
        await up.wait_closed()
        log.close()


def push(body: bytes, repo: str = "acme/app") -> bytes:
    return (
        f"POST /github/{repo}.git/git-receive-pack HTTP/1.1\r\nHost: egress\r\n"
        "Content-Type: application/x-git-receive-pack-request\r\n"
        f"Authorization: Basic placeholder\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def audit(tmp: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp / "egress.jsonl").read_text().splitlines()]


def test_a_push_to_the_bottles_branch_goes_through_whole_and_one_to_main_leaves_nothing(tmp_path: Path) -> None:
    own = commands((OLD, NEW, f"refs/heads/claude-bottle/{SLUG}")) + b"PACK" + b"\x00" * 100_000
    main = commands((OLD, NEW, f"refs/heads/claude-bottle/{SLUG}"), (OLD, NEW, "refs/heads/main")) + b"PACK..."
    seen: list[bytes] = []

    async def go() -> tuple[bytes, bytes]:
        async with github(tmp_path, seen) as port:
            return await send(port, push(own)), await send(port, push(main))

    ok, refused = asyncio.run(go())
    assert ok.startswith(b"HTTP/1.1 200")
    (forwarded,) = seen  # only the allowed push reached the upstream, and whole
    assert forwarded.endswith(own) and f"Basic {TOKEN}".encode() in forwarded
    # Refused in git's protocol: a status report git shows the agent, ref by ref, with the reason.
    assert refused.startswith(b"HTTP/1.1 200") and b"application/x-git-receive-pack-result" in refused
    assert (
        f"ng refs/heads/main only refs/heads/claude-bottle/{SLUG} may be pushed, not refs/heads/main".encode()
        in refused
    )
    assert f"ng refs/heads/claude-bottle/{SLUG} not pushed: another ref in this push was refused".encode() in refused
    pushes = [ln for ln in audit(tmp_path) if ln.get("kind") == "git-push"]
    assert [(p["ref"], p["decision"]) for p in pushes] == [
        (f"refs/heads/claude-bottle/{SLUG}", "allow"),
        (f"refs/heads/claude-bottle/{SLUG}", "allow"),
        ("refs/heads/main", "deny"),
    ]
    assert all(p["repo"] == "acme/app" for p in pushes)


def test_listed_refs_and_repositories_come_from_the_policy(tmp_path: Path) -> None:
    seen: list[bytes] = []
    tag = commands((ZERO, NEW, "refs/tags/v1")) + b"PACK"

    async def go() -> tuple[bytes, bytes]:
        async with github(tmp_path, seen, git_refs=["refs/tags/v*"], git_repos=["acme/app"]) as port:
            return await send(port, push(tag)), await send(port, push(tag, repo="acme/other"))

    allowed, other_repo = asyncio.run(go())
    assert allowed.startswith(b"HTTP/1.1 200") and b"ng refs/tags/v1" in other_repo
    assert b"X-Claude-Bottle-Reason: push refused: repository acme/other is not in the bottle's list" in other_repo
    assert len(seen) == 1


def test_a_refusal_is_a_status_report_git_understands() -> None:
    from claude_bottle.guard.gitpush import capabilities, refusal_report

    main, own = RefUpdate(OLD, NEW, "refs/heads/main"), RefUpdate(OLD, NEW, f"refs/heads/claude-bottle/{SLUG}")
    verdicts = [(own, True, "the bottle's own branch"), (main, False, "only X may be pushed, not refs/heads/main")]
    plain = (
        b"000eunpack ok\n"
        + pkt(f"ng refs/heads/claude-bottle/{SLUG} not pushed: another ref in this push was refused\n")
        + pkt("ng refs/heads/main only X may be pushed, not refs/heads/main\n")
        + b"0000"
    )
    assert refusal_report(verdicts, {"report-status"}) == plain
    assert refusal_report(verdicts, {"report-status-v2"}) == plain  # what git 2.29+ asks for
    banded = refusal_report(verdicts, {"report-status", "side-band-64k"})
    note = pkt("\x02claude-bottle guard: push refused: only X may be pushed, not refs/heads/main\n")
    assert banded == note + pkt("\x01" + plain.decode()) + b"0000"
    small = refusal_report(verdicts, {"report-status", "side-band"})
    assert small is not None and small.startswith(note) and small.endswith(b"0000")
    assert refusal_report(verdicts, set()) is None  # no report asked for: a plain 403
    assert capabilities(commands((OLD, NEW, "refs/heads/x"))) == {"report-status", "side-band-64k"}
    assert capabilities(pkt(f"{OLD} {NEW} refs/heads/x\n") + b"0000") == set()
    assert capabilities(b"0000") == set()


def test_without_a_report_asked_for_a_refusal_is_a_plain_403(tmp_path: Path) -> None:
    seen: list[bytes] = []
    bare = pkt(f"{OLD} {NEW} refs/heads/main\n") + b"0000PACK"

    async def go() -> bytes:
        async with github(tmp_path, seen) as port:
            return await send(port, push(bare))

    refused = asyncio.run(go())
    assert refused.startswith(b"HTTP/1.1 403") and b"push refused: only refs/heads/claude-bottle" in refused
    assert seen == []


def test_a_push_to_a_plain_http_git_server_the_policy_allows_is_judged_too(tmp_path: Path) -> None:
    seen: list[bytes] = []
    own = commands((OLD, NEW, f"refs/heads/claude-bottle/{SLUG}")) + b"PACK-own"
    main = commands((OLD, NEW, "refs/heads/main")) + b"PACK-main"

    async def go() -> tuple[bytes, bytes]:
        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read(1 << 20)
            seen.append(data)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
            writer.close()

        up = await asyncio.start_server(upstream, "127.0.0.1", 0)
        up_port = up.sockets[0].getsockname()[1]
        rules = [{"host": "127.0.0.1", "ports": [up_port], "private": True}]
        (tmp_path / "policy.json").write_text(json.dumps({"bottle": SLUG, "allow": rules}))
        log = AuditLog(tmp_path / "egress.jsonl", bottle=SLUG)
        guard = Guard(PolicyFile(tmp_path / "policy.json"), log, Secrets({}, (), Scanner()))
        server = await guard.serve("127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def plain(body: bytes) -> bytes:
            return (
                f"POST http://127.0.0.1:{up_port}/acme/app.git/git-receive-pack HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{up_port}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body

        try:
            return await send(port, plain(own)), await send(port, plain(main))
        finally:
            server.close()
            await server.wait_closed()
            up.close()
            await up.wait_closed()
            log.close()

    ok, refused = asyncio.run(go())
    assert ok.startswith(b"HTTP/1.1 200") and len(seen) == 1 and seen[0].endswith(b"PACK-own")
    assert refused.startswith(b"HTTP/1.1 200") and b"ng refs/heads/main only refs/heads/claude-bottle" in refused
    pushes = [(p["ref"], p["decision"]) for p in audit(tmp_path) if p.get("kind") == "git-push"]
    assert pushes == [(f"refs/heads/claude-bottle/{SLUG}", "allow"), ("refs/heads/main", "deny")]
