"""The forward proxy: CONNECT and absolute-URI HTTP to allowed hosts only, credential routes, DLP.

(Over 450 lines, on purpose: the Guard class is one connection's life, decided, recorded and relayed; its
steps share the connection's state, and split across modules they would pass it all around. What it reads
is parsed elsewhere: http.py (heads, framing, bodies), tunnel.py (a tunnel's first bytes), gitpush.py,
tls.py.)

Every request is decided from its head, before any of its body is read, and the decision is written
to the audit log when it is made (an allow the log cannot record is refused); a closing line with byte
counts follows when the connection ends. Bodies are streamed, every byte scanned before it leaves, so
the guard's memory is bounded by its connection cap times a small per-connection buffer, whatever
clients send. Refusals answer 403 (or 400/413/502/503) with a one-line reason in the body and in
X-Claude-Bottle-Reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import json
import secrets as _random
import socket
import ssl
import traceback
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from claude_bottle.guard import HEALTH_PATH, http
from claude_bottle.guard.audit import AuditLog, Timer, cap
from claude_bottle.guard.capability import CAPABILITY_PATH, Desk, Invalid
from claude_bottle.guard.capability import MAX_BODY as CAPABILITY_MAX_BODY
from claude_bottle.guard.config import Route, Secrets
from claude_bottle.guard.dlp import Scanner
from claude_bottle.guard.gitpush import MAX_COMMANDS_BYTES as GIT_COMMANDS_MAX
from claude_bottle.guard.gitpush import (
    BadPush,
    PushTarget,
    capabilities,
    commands_end,
    judge_push,
    parse_commands,
    push_target,
    refusal_report,
)
from claude_bottle.guard.http import (
    _CRED_HEADERS,
    _PHRASES,
    CHUNK,
    MAX_CHUNKS,
    MAX_HEAD,
    BodyScan,
    Framing,
    PushRefused,
    Refused,
    Request,
    _number,
    body_framing,
    parse_head,
    split_host_port,
)
from claude_bottle.guard.policy import Decision, PolicyFile, is_ip, is_public_address
from claude_bottle.guard.tls import client_hello_sni
from claude_bottle.guard.tunnel import NEED, SNI_MISMATCH, judge_tunnel

__all__ = ["HEALTH_PATH", "Guard", "Refused", "judge_tunnel", "parse_head"]

BODY_TIMEOUT = 120.0
HEAD_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
FIRST_BYTES_TIMEOUT = 30.0
RESPONSE_TIMEOUT = 300.0
SOCKET_BUFFER = 64 * 1024
# Memory: each connection holds at most ~2*limit in each reader plus the writers' high-water marks and
# the kernel's socket buffers (~0.5 MiB in all); the cap makes that a fixed budget for the whole guard.
MAX_CONNECTIONS = 512


# Agent-shaped fields: redacted before they are written. Reasons are the guard's own words.
_AGENT_TEXT = ("path", "query", "sni", "host_header")


@dataclass
class Conn:
    """One client connection's audit record."""

    cid: str
    entry: dict[str, object]
    timer: Timer = field(default_factory=Timer)
    allowed: bool = False  # an allow line was written: an end line follows
    up: int = 0
    down: int = 0


class Guard:
    """One guard serves one bottle: its policy file, secrets, audit log."""

    def __init__(
        self,
        policy: PolicyFile,
        audit: AuditLog,
        secrets: Secrets | None = None,
        cafile: str | None = None,
        clients: Sequence[str] = (),
        requests: Path | None = None,
    ) -> None:
        self.policy = policy
        self.audit = audit
        self.secrets = secrets or Secrets()
        self.desk = Desk(requests, self.scanner.redact, lambda: self.policy.current().decisions)
        self.connections = 0
        self.clients = [ipaddress.ip_network(c, strict=False) for c in clients]
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._boot = secrets_token()
        self._ssl = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()

    @property
    def scanner(self) -> Scanner:
        return self.secrets.scanner

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._handle, host, port, limit=MAX_HEAD, reuse_address=True)

    def client_allowed(self, addr: str) -> bool:
        if not self.clients:
            return True
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self.clients)

    async def close_connections(self, reason: str = "guard stopping") -> None:
        """Cut every open connection; each writes its closing audit line on the way out."""
        for task in list(self._tasks):
            task.cancel(reason)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    # -- one connection ---------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else "?"
        if not self.client_allowed(client):
            # Only the bottle's own network may use the guard: never a neighbour on its outbound side.
            self.audit.budgeted(
                "proxy",
                ("deny", "client outside the bottle"),
                kind="client",
                client=client,
                decision="deny",
                reason="client outside the bottle",
            )
            writer.close()
            return
        if self.connections >= MAX_CONNECTIONS:
            self.audit.count("proxy", ("deny", "guard at capacity"))
            await self._respond(
                writer, 503, b"claude-bottle egress guard: at capacity\n", "text/plain", "guard at capacity"
            )
            writer.close()
            return
        _tune(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.connections += 1
        conn = Conn(f"{self._boot}-{next(self._ids)}", {"kind": "http", "client": client})
        try:
            await self._serve(conn, reader, writer)
        except asyncio.CancelledError:
            pass  # the guard is stopping: the connection's closing line is written, nothing to report
        finally:
            self.connections -= 1
            if task is not None:
                self._tasks.discard(task)

    async def _serve(self, conn: Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        entry = conn.entry
        ended = "closed"
        try:
            try:
                raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            except asyncio.LimitOverrunError:
                raise Refused(431, "request head too large") from None
            req = parse_head(raw[:-4])
            entry["method"] = req.method
            await self._dispatch(req, reader, writer, conn)
        except Refused as exc:
            self._deny(conn, exc.reason)
            if isinstance(exc, PushRefused):
                await self._respond(writer, 200, exc.report, "application/x-git-receive-pack-result", exc.reason)
            elif not entry.get("tunnel"):
                await self._respond(
                    writer,
                    exc.status,
                    f"claude-bottle egress guard: {exc.reason}\n".encode(),
                    "text/plain",
                    exc.reason,
                )
        except asyncio.CancelledError:
            ended = "guard stopping"
            raise
        except (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            ended = "client went away"
        except Exception:  # noqa: BLE001 - hostile input must never take the guard down: fail closed, on record
            traceback.print_exc()
            self._deny(conn, "internal error")
            ended = "internal error"
        finally:
            if conn.allowed:
                status = {"status": entry["status"]} if "status" in entry else {}
                self.audit.write(
                    kind="end",
                    conn=conn.cid,
                    bytes_up=conn.up,
                    bytes_down=conn.down,
                    duration_ms=conn.timer.ms(),
                    reason=ended,
                    **status,
                )
            with contextlib.suppress(Exception):
                writer.close()

    # -- audit ------------------------------------------------------------------------------------
    def _fields(self, conn: Conn) -> dict[str, object]:
        out: dict[str, object] = {"conn": conn.cid}
        for key, value in conn.entry.items():
            if key == "tunnel":
                continue
            if isinstance(value, str) and key == "host":
                out[key] = self.scanner.redact_host(cap(value))
            elif isinstance(value, str) and key in _AGENT_TEXT:
                out[key] = self.scanner.redact(cap(value))
            else:
                out[key] = value
        return out

    def _allow(self, conn: Conn, reason: str) -> None:
        """The allow line, written before a byte of the request is relayed. No room to record it: refused."""
        self._recordable()
        conn.entry.update(decision="allow", reason=reason)
        fields = self._fields(conn)
        if not self.audit.admit("proxy"):
            self.audit.count("proxy", ("deny", "over the audit budget"))
            conn.entry["budget"] = True
            raise Refused(503, "over the audit budget: slow down")
        if not self.audit.write(**fields):
            raise Refused(503, "audit log cannot record: refusing")
        conn.allowed = True

    def _deny(self, conn: Conn, reason: str) -> None:
        if conn.entry.pop("budget", None):
            return  # already counted for the summary
        conn.entry.update(decision="deny", reason=reason)
        fields = self._fields(conn)
        fields["duration_ms"] = conn.timer.ms()
        self.audit.budgeted("proxy", ("deny", reason), **fields)

    # -- dispatch ---------------------------------------------------------------------------------
    async def _dispatch(
        self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Conn
    ) -> None:
        entry = conn.entry
        if req.method == "CONNECT":
            entry["kind"] = "connect"
            host, port = split_host_port(req.target, 443)
            entry.update(host=host, port=port)
            self._scan_host(host)
            decision = await self._decide_or_ask(host, port, conn)
            up_r, up_w = await self._open(host, port, decision, entry)
            try:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                entry["tunnel"] = True  # from here a refusal can only close the connection
                first = await self._first_bytes(reader, host, entry)
                self._allow(conn, decision.reason)
                up_w.write(first)
                conn.up += len(first)
                await self._relay(reader, writer, up_r, up_w, conn)
            finally:
                up_w.close()
            return
        if req.target.startswith("/"):
            if req.method == "POST" and req.target == CAPABILITY_PATH:
                await self._capability(req, reader, writer, conn)
                return
            if req.method == "GET" and req.target == HEALTH_PATH:
                body = json.dumps({"status": "ok", "bottle": self.policy.current().bottle}).encode() + b"\n"
                await self._respond(writer, 200, body, "application/json")
                return
            matched = self.secrets.match(req.target)
            if matched is None:
                path, _, query = req.target.partition("?")
                entry.update(kind="local", path=path, **({"query": query} if query else {}))
                raise Refused(404, "not a proxy request or credential route")
            route, rest = matched
            path, _, query = rest.partition("?")
            entry.update(kind="route", route=route.name, host=route.host, port=route.port, path=path)
            if query:
                entry["query"] = query
            await self._route(req, route, rest, reader, writer, conn)
            return
        url = urlsplit(req.target)
        if url.scheme != "http" or not url.netloc:
            raise Refused(400, "only http:// absolute URIs and CONNECT are proxied")
        host, port = split_host_port(url.netloc, 80)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        entry.update(host=host, port=port, path=url.path or "/")
        if url.query:
            entry["query"] = url.query
        self._scan_host(host)
        hh = req.header("host")
        if hh is not None and split_host_port(hh, port)[0] != host:
            entry["host_header"] = hh
            raise Refused(403, "host-header-mismatch")
        self._scan_request(req, path)
        framing = body_framing(req)
        decision = await self._decide_or_ask(host, port, conn)
        pieces = None
        # A push to a git server the policy allows over plain HTTP is judged as on a credential route, from
        # the target as sent (fragment and all): `path` is what is forwarded, and for a push the two agree.
        authority_end = len(url.scheme) + 3 + len(url.netloc)
        if req.target[:authority_end].lower() != f"{url.scheme}://{url.netloc}".lower():
            raise Refused(400, "malformed request target")  # urlsplit read it otherwise than as sent
        push = push_target(req.target[authority_end:], req.all("content-type"))
        if push is not None:
            pieces = await self._judge_push(req, framing, push, reader, conn)
        up_r, up_w = await self._open(host, port, decision, entry)
        try:
            self._allow(conn, decision.reason)
            authority = (f"[{host}]" if ":" in host else host) + ("" if port == 80 else f":{port}")
            # The Host header is always the checked host: another one could reach another vhost.
            head = [f"{req.method} {path} HTTP/1.1", f"Host: {authority}", *req.forwarded_headers()]
            await self._send_request(req, framing, head, reader, writer, up_w, conn, pieces=pieces)
            await self._relay(reader, writer, up_r, up_w, conn, client_done=True)
        finally:
            up_w.close()

    # -- the capability desk ------------------------------------------------------------------------
    async def _capability(
        self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Conn
    ) -> None:
        """A request for what the bottle lacks: judged, recorded (requests file and audit log), answered.
        An egress request is held until the operator answers (or its wait runs out)."""
        conn.entry.update(kind="capability", path=CAPABILITY_PATH)
        framing = body_framing(req)
        if framing.kind != "length" or framing.length > CAPABILITY_MAX_BODY:
            raise Refused(400, "capability request: a form body with Content-Length, at most 4 KiB")
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                body = await reader.readexactly(framing.length)
        except (TimeoutError, asyncio.IncompleteReadError):
            raise Refused(408, "capability request body too slow or cut") from None
        try:
            submitted, wait = self.desk.submit(body)
        except Invalid as exc:
            raise Refused(400, f"capability request refused: {exc}") from None
        conn.entry.update(request=submitted.id, capability=submitted.label(), reason=submitted.reason)
        if not self.audit.write(**self._fields(conn), decision="request"):
            raise Refused(503, "audit log cannot record: refusing")
        if submitted.kind != "egress":
            text = (
                f"requested {submitted.label()} ({submitted.id}). The operator is asked; a package request "
                "stops this bottle now, and this session resumes once it is granted (installed) or refused.\n"
            )
            await self._respond(writer, 202, text.encode(), "text/plain")
            return
        decision, why = await self.desk.answer(submitted, wait, asyncio.sleep)
        conn.entry.update(answer=decision, **({"answer_reason": why} if why else {}))
        self.audit.write(**self._fields(conn), decision=decision)
        if decision == "grant":
            body_text = f"granted {submitted.label()}: reachable now\n"
            await self._respond(writer, 200, body_text.encode(), "text/plain")
        elif decision == "deny":
            refusal = f"denied {submitted.label()}" + (f": {why}" if why else "") + "\n"
            await self._respond(writer, 403, refusal.encode(), "text/plain")
        else:
            late = f"no answer to {submitted.label()} within {wait:.0f}s: the operator may still grant it\n"
            await self._respond(writer, 408, late.encode(), "text/plain")

    # -- checks -----------------------------------------------------------------------------------
    def _scan(self, data: bytes | str) -> None:
        hit = self.scanner.find_bytes(data) if isinstance(data, bytes) else self.scanner.find(data)
        if hit is not None:
            raise Refused(403, hit.reason)

    def _scan_host(self, host: str) -> None:
        hit = self.scanner.find_host(host)
        if hit is not None:
            raise Refused(403, hit.reason)

    def _scan_request(self, req: Request, path: str, skip: Collection[str] = ()) -> None:
        self._scan(path)
        self._scan("\n".join(f"{k}: {v}" for k, v in req.headers if k.lower() not in skip))

    def _decide(self, host: str, port: int) -> Decision:
        decision = self.policy.current().check(host, port)
        if not decision.allowed:
            raise Refused(403, decision.reason)
        self._recordable()
        return decision

    async def _decide_or_ask(self, host: str, port: int, conn: Conn) -> Decision:
        """As _decide; in ask mode a refusal becomes a request to the operator, and the connection waits
        (up to the policy's ask_timeout) for the answer: granted in time, it goes through."""
        policy = self.policy.current()
        decision = policy.check(host, port)
        if decision.allowed or not policy.ask_timeout:
            return self._decide(host, port)
        try:
            req = self.desk.ask(host, port, decision.reason)
        except Invalid:
            raise Refused(403, decision.reason) from None
        conn.entry.update(request=req.id)
        self.audit.write(
            kind="capability", decision="request", capability=req.label(), request=req.id, reason=req.reason
        )
        answer, why = await self.desk.answer(req, policy.ask_timeout, asyncio.sleep)
        if answer == "grant":
            return self._decide(host, port)  # the grant reached the policy before the answer did
        if answer == "deny":
            raise Refused(403, "denied by the operator" + (f": {why}" if why else ""))
        raise Refused(403, f"ask mode: no answer within {policy.ask_timeout:.0f}s ({decision.reason})")

    def _recordable(self) -> None:
        """Before connecting anywhere: an allow the audit log could not record is not made."""
        if not self.audit.can_record():
            raise Refused(503, "audit log cannot record: refusing")

    async def _first_bytes(self, reader: asyncio.StreamReader, host: str, entry: dict[str, object]) -> bytes:
        """The tunnel's first bytes, read until they can be judged (nothing is relayed before)."""
        try:
            async with asyncio.timeout(FIRST_BYTES_TIMEOUT):
                return await self._judge_first(reader, host, entry)
        except TimeoutError:
            raise Refused(408, "tunnel-first-bytes-too-slow") from None

    async def _judge_first(self, reader: asyncio.StreamReader, host: str, entry: dict[str, object]) -> bytes:
        buf = b""
        while True:
            chunk = await reader.read(CHUNK)
            buf += chunk
            verdict, detail = judge_tunnel(buf, host, eof=not chunk)
            if verdict is NEED:
                continue
            if verdict == "deny":
                if detail == SNI_MISMATCH:
                    with contextlib.suppress(ValueError):
                        entry["sni"] = str(client_hello_sni(buf))
                raise Refused(403, str(detail))
            if detail:
                entry["sni"] = detail
            return buf

    async def _resolve(self, host: str, port: int) -> list[str]:
        if is_ip(host):
            return [host]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            raise Refused(502, "cannot resolve the host") from None
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def _open(
        self, host: str, port: int, decision: Decision | None, entry: dict[str, object], tls: bool = False
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        addrs = await self._resolve(host, port)
        allow_private = decision is None or (decision.rule is not None and decision.rule.private)
        usable = [a for a in addrs if allow_private or is_public_address(a)]
        if not usable:
            entry["resolved"] = addrs[0] if addrs else ""
            raise Refused(403, "ssrf: resolves to a non-public address")
        last: Exception | None = None
        for addr in usable:  # connect to the very address that was checked: no second lookup
            try:
                up_r, up_w = await asyncio.wait_for(
                    asyncio.open_connection(
                        addr, port, limit=CHUNK, ssl=self._ssl if tls else None, server_hostname=host if tls else None
                    ),
                    CONNECT_TIMEOUT,
                )
            except (TimeoutError, OSError) as exc:
                last = exc
                continue
            entry["addr"] = addr
            _tune(up_w)
            return up_r, up_w
        raise Refused(502, f"cannot connect upstream ({type(last).__name__})")

    # -- request bodies ---------------------------------------------------------------------------
    async def _send_request(
        self,
        req: Request,
        framing: Framing,
        head: list[str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_w: asyncio.StreamWriter,
        conn: Conn,
        *,
        pieces: AsyncIterator[bytes] | None = None,
    ) -> None:
        """The request head, then its body streamed upstream as it arrives, each piece scanned first
        (`pieces`: the body as already begun by a judge that had to read its start)."""
        if framing.kind == "chunked":
            head.append("Transfer-Encoding: chunked")
        elif framing.kind == "length" or req.method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {framing.length}")
        head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        up_w.write(data)
        conn.up += len(data)
        if framing.kind == "none":
            await up_w.drain()
            return
        if (req.header("expect") or "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        scan = BodyScan(self.scanner)

        async def emit(piece: bytes) -> None:
            if not piece:
                return
            out = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if framing.kind == "chunked" else piece
            up_w.write(out)
            conn.up += len(piece)
            await up_w.drain()

        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                async for piece in pieces if pieces is not None else _body_pieces(framing, reader):
                    await emit(scan.feed(piece))
                await emit(scan.finish())
        except TimeoutError:
            raise Refused(408, "request body too slow") from None
        if framing.kind == "chunked":
            up_w.write(b"0\r\n\r\n")
        await up_w.drain()

    # -- credential routes ------------------------------------------------------------------------
    async def _route(
        self,
        req: Request,
        route: Route,
        rest: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: Conn,
    ) -> None:
        # The agent's placeholder credential headers are replaced, so they are not scanned.
        self._scan_request(req, rest, skip=_CRED_HEADERS)
        framing = body_framing(req)
        self._recordable()
        pieces = None
        push = push_target(rest, req.all("content-type"))
        if push is not None:
            pieces = await self._judge_push(req, framing, push, reader, conn)
        # The operator named this upstream: private addresses are fine, no allow rule needed.
        up_r, up_w = await self._open(route.host, route.port, None, conn.entry, tls=route.scheme == "https")
        try:
            self._allow(conn, f"credential route {route.name}")
            authority = route.host if route.port in (80, 443) else f"{route.host}:{route.port}"
            head = [
                f"{req.method} {route.base_path}{rest} HTTP/1.1",
                f"Host: {authority}",
                *req.forwarded_headers(drop=_CRED_HEADERS),
                f"{route.header}: {route.value}",
            ]
            await self._send_request(req, framing, head, reader, writer, up_w, conn, pieces=pieces)
            await self._route_response(route, up_r, writer, conn)
        finally:
            up_w.close()

    async def _judge_push(
        self, req: Request, framing: Framing, push: PushTarget, reader: asyncio.StreamReader, conn: Conn
    ) -> AsyncIterator[bytes]:
        """Read a push's ref-update commands (before the pack), judge each, one audit line per update; a
        refused one refuses the whole push before a byte of it leaves. The body then goes on as read. A push
        whose path is respelled or reads two ways is refused from its head (`push_target` says why)."""
        if push.refusal is not None:
            raise Refused(403, f"push refused: {push.refusal}")
        if req.header("content-encoding"):
            raise Refused(400, "a compressed push cannot be judged")
        if framing.kind == "none":
            raise Refused(400, "a push without a body")
        body = _body_pieces(framing, reader)
        buf = b""
        end = None
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                async for piece in body:
                    buf += piece
                    end = commands_end(buf)
                    if end is not None:
                        break
                    if len(buf) > GIT_COMMANDS_MAX:
                        raise Refused(413, "push commands over 64 KiB")
            if end is None:
                raise Refused(400, "push commands cut short")
            updates = parse_commands(buf[:end])
        except TimeoutError:
            raise Refused(408, "push commands too slow") from None
        except BadPush as exc:
            raise Refused(400, f"push refused: {exc}") from None
        policy = self.policy.current()
        repo = push.repo
        verdicts = judge_push(updates, slug=policy.bottle, patterns=policy.git_refs, repo=repo, repos=policy.git_repos)
        for u, ok, why in verdicts:
            self.audit.write(
                kind="git-push", conn=conn.cid, repo=repo, ref=u.ref, old=u.old, new=u.new,
                decision="allow" if ok else "deny", reason=why,
            )  # fmt: skip
        refused = [why for _u, ok, why in verdicts if not ok]
        if refused:
            report = refusal_report(verdicts, capabilities(buf[:end]))
            if report is None:
                raise Refused(403, f"push refused: {refused[0]}")
            async with asyncio.timeout(BODY_TIMEOUT):  # the pack is read (and dropped) before git hears back
                async for _piece in body:
                    pass
            raise PushRefused(f"push refused: {refused[0]}", report)

        async def rest_of_body() -> AsyncIterator[bytes]:
            yield buf
            async for piece in body:
                yield piece

        return rest_of_body()

    async def _route_response(
        self, route: Route, up_r: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Conn
    ) -> None:
        try:
            head = await asyncio.wait_for(up_r.readuntil(b"\r\n\r\n"), RESPONSE_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise Refused(502, f"upstream {route.name} sent no response ({type(exc).__name__})") from None
        status_line, *resp_headers = head[:-4].decode("latin-1").split("\r\n")
        code = status_line.split(" ")[1] if status_line.count(" ") else ""
        conn.entry["status"] = _number(code) or 0
        # One request per connection: tell the client so it never reuses a socket we are closing.
        kept = [h for h in resp_headers if h.split(":", 1)[0].strip().lower() not in ("connection", "keep-alive")]
        writer.write(("\r\n".join([status_line, *kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1"))
        conn.entry["tunnel"] = True  # the response has begun: a late failure can only close
        while chunk := await up_r.read(CHUNK):  # streamed as it arrives: SSE is not buffered
            writer.write(chunk)
            conn.down += len(chunk)
            await writer.drain()

    # -- relaying ---------------------------------------------------------------------------------
    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
        conn: Conn,
        *,
        client_done: bool = False,
    ) -> None:
        """Both directions until each side closes. With client_done (one checked request has been sent),
        nothing more from the client is relayed: a pipelined second request would go unchecked. An
        upstream that breaks before answering a checked request gets the client a 502, never silence."""
        conn.entry["tunnel"] = True
        unanswered = False

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            """One direction until its end: a clean end is passed on as a half-close; a broken one (a
            reset, an error) ends both directions, so neither side waits for ever."""
            nonlocal unanswered
            try:
                while chunk := await src.read(CHUNK):
                    dst.write(chunk)
                    if up:
                        conn.up += len(chunk)
                    else:
                        conn.down += len(chunk)
                    await dst.drain()
                if not up and client_done and conn.down == 0:
                    unanswered = True  # closed without a byte of response
                elif dst.can_write_eof():
                    dst.write_eof()
            except (ConnectionError, OSError):
                if not up and client_done and conn.down == 0:
                    unanswered = True
                    up_w.close()
                    return
                for w in (writer, up_w):
                    w.close()

        async def half_close() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                await up_w.drain()
                if up_w.can_write_eof():
                    up_w.write_eof()

        upward = half_close() if client_done else pump(reader, up_w, up=True)
        await asyncio.gather(upward, pump(up_r, writer, up=False))
        if unanswered:
            conn.entry["status"] = 502
            await self._respond(
                writer,
                502,
                b"claude-bottle egress guard: the upstream closed without answering\n",
                "text/plain",
                "upstream closed without answering",
            )

    @staticmethod
    async def _respond(
        writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str, reason: str | None = None
    ) -> None:
        head = [
            f"HTTP/1.1 {status} {_PHRASES.get(status, 'OK' if status == 200 else 'Error')}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if reason:
            head.append(f"X-Claude-Bottle-Reason: {reason}")
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            await asyncio.wait_for(writer.drain(), 5)


async def _body_pieces(framing: Framing, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The body's bytes in pieces of at most CHUNK, de-chunked, within http.MAX_BODY (one limit, read when used)."""
    if framing.kind == "length":
        left = framing.length
        while left:
            piece = await reader.read(min(CHUNK, left))
            if not piece:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(piece)
            yield piece
        return
    total = 0
    for _ in range(MAX_CHUNKS):
        line = await reader.readuntil(b"\r\n")
        size = _number(line[:-2].split(b";")[0].strip().decode("latin-1"), 16)
        if size is None:
            raise Refused(400, "bad chunk size")
        if size == 0:
            for _ in range(64):  # trailers, bounded; never forwarded
                if await reader.readuntil(b"\r\n") == b"\r\n":
                    return
            raise Refused(400, "too many trailers")
        total += size
        if total > http.MAX_BODY:
            raise Refused(413, "request body over 32 MiB")
        left = size
        while left:
            piece = await reader.read(min(CHUNK, left))
            if not piece:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(piece)
            yield piece
        if await reader.readexactly(2) != b"\r\n":
            raise Refused(400, "bad chunk framing")
    raise Refused(413, "too many chunks")


def _tune(writer: asyncio.StreamWriter) -> None:
    """Small kernel and transport buffers: the per-connection part of the guard's memory budget."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    with contextlib.suppress(AttributeError, NotImplementedError):
        writer.transport.set_write_buffer_limits(high=2 * CHUNK)


def secrets_token() -> str:
    return _random.token_hex(2)
