"""Every spelling of a smart-HTTP push is judged: percent-escapes, dot segments, doubled and trailing
slashes, `;params`, case, a query or fragment, NUL, backslashes, double encoding, and a push named by its
content type alone. On the credential route and on the plain-HTTP path alike, none of them reaches the
upstream; git's own spelling still goes through, and fetches and the push's discovery GET are untouched."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.guard import gitpush
from claude_bottle.guard.audit import AuditLog
from claude_bottle.guard.config import Route, Secrets
from claude_bottle.guard.dlp import Scanner
from claude_bottle.guard.policy import PolicyFile
from claude_bottle.guard.proxy import Guard

from .guardkit import send

OLD, NEW = "a" * 40, "b" * 40
SLUG = "claude-abcde"
TOKEN = "ghp_REALTOKEN" + "x" * 30
PUSH_TYPE = "application/x-git-receive-pack-request"


def pkt(line: str) -> bytes:
    data = line.encode()
    return f"{len(data) + 4:04x}".encode() + data


def commands(ref: str) -> bytes:
    return pkt(f"{OLD} {NEW} {ref}\0report-status side-band-64k\n") + b"0000"


TO_MAIN = commands("refs/heads/main") + b"PACK-main"
TO_OWN = commands(f"refs/heads/claude-bottle/{SLUG}") + b"PACK-own"

# name -> (path after the route or the authority, content type or None)
SPELLINGS: dict[str, tuple[str, str | None]] = {
    "escaped-dash": ("/acme/app.git/git%2Dreceive-pack", None),
    "escaped-letter": ("/acme/app.git/%67it-receive-pack", None),
    "escaped-slash-in-repo": ("/acme%2Fapp.git/git-receive-pack", None),
    "escaped-slash-before": ("/acme/app.git%2Fgit-receive-pack", None),
    "escaped-slash-lower-case": ("/acme/app.git%2fgit-receive-pack", None),
    "escaped-slash-after": ("/acme/app.git/git-receive-pack%2F", None),
    "trailing-slash": ("/acme/app.git/git-receive-pack/", None),
    "dot-segment": ("/acme/app.git/./git-receive-pack", None),
    "dot-dot-segment": ("/acme/app.git/x/../git-receive-pack", None),
    "dot-dot-with-params": ("/acme/app.git/x/..;/git-receive-pack", None),
    "escaped-dots": ("/acme/app.git/git-receive-pack/%2E%2E/..", None),
    "doubled-slash": ("/acme/app.git//git-receive-pack", None),
    "leading-doubled-slash": ("//acme/app.git/git-receive-pack", None),
    "params-suffix": ("/acme/app.git/git-receive-pack;x=1", None),
    "params-in-repo": ("/acme/app.git;x/git-receive-pack", None),
    "upper-case": ("/acme/app.git/GIT-RECEIVE-PACK", None),
    "mixed-case": ("/acme/app.git/Git-Receive-Pack", None),
    "query": ("/acme/app.git/git-receive-pack?x=1", None),
    "fragment": ("/acme/app.git/git-receive-pack#x", None),
    "nul": ("/acme/app.git/git-receive-pack%00", None),
    "nul-then-suffix": ("/acme/app.git/git-receive-pack%00.txt", None),
    "backslash": ("/acme/app.git\\git-receive-pack", None),
    "escaped-backslash": ("/acme/app.git%5Cgit-receive-pack", None),
    "double-encoding": ("/acme/app.git/%2567it-receive-pack", None),
    "unicode-case-fold": ("/acme/app.git/git-receive-pac%E2%84%AA", None),  # KELVIN SIGN folds to k
    "content-type-only": ("/acme/app.git/git-upload-pack", PUSH_TYPE),
    "content-type-odd-case": ("/acme/app.git/anything", "Application/X-Git-Receive-Pack-Request; charset=x"),
}


@dataclass
class Rig:
    port: int  # the guard's
    up_port: int  # the fake git server's
    seen: list[bytes] = field(default_factory=list)  # every connection the upstream accepted, as read
    audit: Path = Path()

    def request(
        self, via: str, path: str, body: bytes = b"", ctype: str | None = PUSH_TYPE, method: str = "POST"
    ) -> bytes:
        target = f"/github{path}" if via == "route" else f"http://127.0.0.1:{self.up_port}{path}"
        host = "egress" if via == "route" else f"127.0.0.1:{self.up_port}"
        head = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
        if ctype is not None:
            head.append(f"Content-Type: {ctype}")
        if via == "route":
            head.append("Authorization: Basic placeholder")
        if body:
            head.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.audit.read_text().splitlines()]


@contextlib.asynccontextmanager
async def rig(tmp: Path) -> AsyncIterator[Rig]:
    """A guard with a GitHub route and a plain-HTTP allow rule, both to one fake git server that records
    every connection it is given (a refused push must leave it none)."""
    seen: list[bytes] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(b"")
        with contextlib.suppress(Exception):
            head = await reader.readuntil(b"\r\n\r\n")
            seen[-1] = head
            lengths = [h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")]
            seen[-1] = head + await reader.readexactly(int(lengths[0]) if lengths else 0)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        writer.close()

    up = await asyncio.start_server(upstream, "127.0.0.1", 0)
    up_port = up.sockets[0].getsockname()[1]
    rules = [{"host": "127.0.0.1", "ports": [up_port], "private": True}]
    (tmp / "policy.json").write_text(json.dumps({"bottle": SLUG, "allow": rules}))
    log = AuditLog(tmp / "egress.jsonl", bottle=SLUG)
    route = Route("github", f"http://127.0.0.1:{up_port}", "authorization", f"Basic {TOKEN}", TOKEN)
    guard = Guard(PolicyFile(tmp / "policy.json"), log, Secrets({"github": route}, (), Scanner(secrets=[TOKEN])))
    server = await guard.serve("127.0.0.1", 0)
    try:
        yield Rig(server.sockets[0].getsockname()[1], up_port, seen, tmp / "egress.jsonl")
    finally:
        server.close()
        await server.wait_closed()
        up.close()
        await up.wait_closed()
        log.close()


def run(tmp: Path, *requests: tuple[str, str, bytes, str | None, str]) -> tuple[Rig, list[bytes]]:
    async def go() -> tuple[Rig, list[bytes]]:
        async with rig(tmp) as r:
            return r, [await send(r.port, r.request(*q)) for q in requests]

    return asyncio.run(go())


def reason(response: bytes) -> str:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    return next((h.split(": ", 1)[1] for h in head.split("\r\n") if h.startswith("X-Claude-Bottle-Reason:")), "")


VIAS = ["route", "plain"]


# Each path spelling with git's content type and without it (the path alone must make it a push).
CASES = [(name, typed) for name, (_p, ctype) in SPELLINGS.items() for typed in ((True,) if ctype else (True, False))]


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize(("name", "typed"), CASES, ids=[f"{n}-{'typed' if t else 'untyped'}" for n, t in CASES])
def test_every_spelling_of_a_push_to_main_is_refused_and_leaves_nothing(
    tmp_path: Path, via: str, name: str, typed: bool
) -> None:
    path, ctype = SPELLINGS[name]
    r, (response,) = run(tmp_path, (via, path, TO_MAIN, ctype or (PUSH_TYPE if typed else None), "POST"))
    assert r.seen == [], f"{name}: the upstream was reached: {r.seen!r}"
    why = reason(response)
    assert why.startswith("push refused: "), (name, response[:300])
    denies = [ln for ln in r.lines() if ln.get("decision") == "deny" and ln.get("kind") != "git-push"]
    assert [ln["reason"] for ln in denies] == [why]  # the guard's reason is on record


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("name", ["escaped-dash", "trailing-slash", "upper-case", "query", "escaped-slash-in-repo"])
def test_a_respelled_push_is_refused_even_to_the_bottles_own_branch(tmp_path: Path, via: str, name: str) -> None:
    # What is forwarded is what was judged: git never respells its push path, so a respelled one is refused
    # rather than rewritten.
    path, _ctype = SPELLINGS[name]
    r, (response,) = run(tmp_path, (via, path, TO_OWN, PUSH_TYPE, "POST"))
    assert r.seen == [] and reason(response).startswith("push refused: ")


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("ctype", [PUSH_TYPE, None])
@pytest.mark.parametrize("repo", ["/acme/app.git", "/acme/app", "/repo.git"])
def test_a_push_in_gits_own_spelling_to_the_bottles_branch_goes_through(
    tmp_path: Path, via: str, ctype: str | None, repo: str
) -> None:
    path = f"{repo}/git-receive-pack"
    r, (ok, refused) = run(tmp_path, (via, path, TO_OWN, ctype, "POST"), (via, path, TO_MAIN, ctype, "POST"))
    assert ok.startswith(b"HTTP/1.1 200") and ok.endswith(b"ok")
    (forwarded,) = r.seen  # the refused push to main left nothing
    assert forwarded.split(b"\r\n", 1)[0] == f"POST {path} HTTP/1.1".encode()  # the judged target, verbatim
    assert forwarded.endswith(TO_OWN)
    assert b"ng refs/heads/main only refs/heads/claude-bottle/" in refused
    pushes = [(p["ref"], p["decision"], p["repo"]) for p in r.lines() if p.get("kind") == "git-push"]
    expect = "acme/app" if repo.startswith("/acme") else None
    assert pushes == [(f"refs/heads/claude-bottle/{SLUG}", "allow", expect), ("refs/heads/main", "deny", expect)]


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize(
    ("method", "path", "ctype"),
    [
        ("GET", "/acme/app.git/info/refs?service=git-receive-pack", None),  # the push's discovery: no ref updates
        ("GET", "/acme/app.git/info/refs?service=git-upload-pack", None),
        ("POST", "/acme/app.git/git-upload-pack", "application/x-git-upload-pack-request"),
        ("GET", "/repos/acme/app/contents/docs%2Freadme.md", None),  # ambiguous, not a push: not ours to refuse
        ("GET", "/repos/git/git/contents/Documentation/git-receive-pack.txt", None),
        ("GET", "/acme/app.git/HEAD", None),
    ],
)
def test_fetches_and_other_git_endpoints_are_forwarded_untouched(
    tmp_path: Path, via: str, method: str, path: str, ctype: str | None
) -> None:
    body = pkt("command=ls-refs\n") + b"0000" if method == "POST" else b""
    r, (response,) = run(tmp_path, (via, path, body, ctype, method))
    assert response.startswith(b"HTTP/1.1 200"), response[:300]
    (forwarded,) = r.seen
    assert forwarded.split(b"\r\n", 1)[0] == f"{method} {path} HTTP/1.1".encode()
    assert not [ln for ln in r.lines() if ln.get("kind") == "git-push"]


# -- the reading itself ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/acme/app.git/git-receive-pack", "/acme/app.git/git-receive-pack"),
        ("/acme/app.git/git%2Dreceive-pack", "/acme/app.git/git-receive-pack"),
        ("/acme/app.git/%67it-receive-pack?x=1", "/acme/app.git/git-receive-pack"),
        ("/acme/app.git/git-receive-pack/", "/acme/app.git/git-receive-pack"),
        ("//acme//app.git///git-receive-pack", "/acme/app.git/git-receive-pack"),
        ("/x/./git-receive-pack", "/x/git-receive-pack"),
        ("/a/b/../git-receive-pack", "/a/git-receive-pack"),
        ("/../../a/git-receive-pack", "/a/git-receive-pack"),  # never above the root
        ("/a/x/..;y/git-receive-pack;z", "/a/git-receive-pack"),
        ("/a/git-receive-pack#frag", "/a/git-receive-pack"),
        ("/a%2Fb/git-receive-pack", "/a/b/git-receive-pack"),  # the lenient reading (CGI decodes PATH_INFO)
        ("", "/"),
        ("?x", "/"),
    ],
)
def test_the_path_is_read_as_the_most_lenient_server_would(target: str, path: str) -> None:
    assert gitpush.normalise_path(target) == path


RESPELLED = "push path respelled: git sends /REPO/git-receive-pack as is"
NO_REPO = "cannot read the repository from the push path"


def ambiguous(what: str) -> str:
    return f"ambiguous push path ({what}): servers read it differently"


@pytest.mark.parametrize(
    ("target", "ctypes", "verdict"),
    [
        ("/acme/app.git/git-receive-pack", (), ("acme/app", None)),
        ("/acme/app/git-receive-pack", (PUSH_TYPE,), ("acme/app", None)),
        ("/team/sub/app.git/git-receive-pack", (), (None, None)),  # readable, not owner/name: judged, repo None
        ("/acme/app.git/git-upload-pack", (), None),
        ("/acme/app.git/info/refs?service=git-receive-pack", (), None),
        ("/acme%2Fapp/contents", (), None),  # ambiguous but no push: not ours to refuse
        ("/acme/app.git/git%2Dreceive-pack", (), (None, RESPELLED)),
        ("/acme/app.git/GIT-receive-pack", (), (None, RESPELLED)),
        ("/acme%2Fapp/git-receive-pack", (), (None, ambiguous("an encoded slash"))),
        ("/a/git-receive-pack%00", (), (None, ambiguous("an encoded NUL"))),
        ("/a\\git-receive-pack", (), (None, ambiguous("a backslash"))),
        ("/a/x/../git-receive-pack", (), (None, ambiguous("a dot segment"))),
        ("/a/%2567it-receive-pack", (), (None, ambiguous("a double percent-encoding"))),
        ("/acme/app/x", (PUSH_TYPE,), (None, "a receive-pack request to a path that is not /REPO/git-receive-pack")),
        ("/git-receive-pack", (), (None, NO_REPO)),
        ("/ac!me/app/git-receive-pack", (), (None, NO_REPO)),
    ],
)
def test_what_is_a_push_and_what_is_refused_before_its_commands_are_read(
    target: str, ctypes: tuple[str, ...], verdict: tuple[str | None, str | None] | None
) -> None:
    got = gitpush.push_target(target, ctypes)
    assert (None if got is None else (got.repo, got.refusal)) == verdict


def test_deep_encoding_is_bounded_and_refused() -> None:
    deep = "/a/%" + "25" * 5000 + "67it-receive-pack"  # %252525...2567: one layer a decoding
    got = gitpush.push_target(deep)
    assert got is not None and got.refusal is not None and got.refusal.startswith("ambiguous push path")
